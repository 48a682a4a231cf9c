"""A zero-shot attribute classifier over a local CLIP folder, from class prompts per attribute."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import Tensor, nn
from torchvision.transforms.v2.functional import center_crop
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

from lightning_fair.classifiers.class_prompts import DEFAULT_TEMPLATES, check_templates, class_prompts
from lightning_fair.classifiers.view import ClassifierContract
from lightning_fair.models import read_json

SPEC_FILE = "zero_shot.json"  # inside a CLIP folder: its default class prompts
SPEC_SUFFIXES = (".yaml", ".yml", ".json")
SPEC_KEYS = {"clip", "attributes", "templates", "threshold"}
TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")  # transformers 4 and 5


class ZeroShotClassifier(ClassifierContract, nn.Module):
    """Labels images by their CLIP similarity to class prompts, as the text-to-image fairness literature does.

    Per attribute, each class is described by one or more prompts (each phrase in each template: a prompt ensemble);
    the class embedding is the normalised mean of its prompts' normalised text embeddings (CLIP's ensembling), and the
    class probabilities are the softmax of the image's cosine similarities times CLIP's logit scale. With a
    ``threshold``, a sample whose most likely class has a lower probability is ``unknown`` (:meth:`abstains`): the
    metrics report its share and leave it out of the proportions, as peers do with a face detector.

    Its features (``fid_clip``) are the normalised image embeddings; :meth:`clip_score` gives CLIP score
    (``100 * max(cos, 0)``, as torchmetrics' ``CLIPScore``) of images against their prompts. Images are taken in
    [-1, 1] and preprocessed in torch as the folder's ``CLIPImageProcessor`` says (shortest side resized, centre crop,
    normalisation), so batches stay on their device. CLIP sees photographs of any framing: it accepts every view.

    Args:
        clip: a local folder written by ``CLIPModel.save_pretrained`` with the processor's files
            (``CLIPProcessor.save_pretrained``); nothing is downloaded.
        attributes: per attribute name, its classes: a preset (``gender``, ``race4``, ``race7``, ``age2``, ``age3``,
            ``gender_race4``, ``gender_race7``), a list with one phrase or list of phrases per class, or a mapping of
            class names to phrases.
        templates: prompts with one ``{}`` slot each, into which every class phrase goes.
        threshold: smallest probability of the most likely class for a label (0: never ``unknown``).
        source: where the options came from (a spec file), for errors.
    """

    feature_space = "clip"

    def __init__(
        self,
        clip: str,
        attributes: dict[str, Any],
        templates: list[str] | None = None,
        threshold: float = 0.0,
        source: str = "classifier",
    ) -> None:
        super().__init__()
        if not attributes:
            raise ValueError(f"'{source}': option 'attributes' needs the class prompts of at least one attribute")
        if not 0 <= threshold < 1:
            raise ValueError(f"'{source}': option 'threshold' must lie in [0, 1), got {threshold}")
        folder = Path(clip).expanduser()
        self.model, self.tokenizer, processor = load_clip(folder, f"'{source}': option 'clip'")
        checked = check_templates(list(templates or DEFAULT_TEMPLATES), f"{source}: templates")
        self.classes = [
            class_prompts(name, value, checked, f"{source}: attributes") for name, value in attributes.items()
        ]
        self.attributes = [prompts.attribute for prompts in self.classes]
        self.num_classes = [len(prompts.class_names) for prompts in self.classes]
        self.threshold = threshold
        self.reference: str | None = clip  # where it came from, for messages (load_classifier: the spec)
        self.hparams = {
            "clip": str(folder.resolve()),
            "attributes": {prompts.attribute: [list(group) for group in prompts.prompts] for prompts in self.classes},
            "threshold": threshold,
        }
        self.image_mean = torch.tensor(processor.image_mean).view(1, -1, 1, 1)
        self.image_std = torch.tensor(processor.image_std).view(1, -1, 1, 1)
        size, crop = processor.size, processor.crop_size
        self.resize_to = _side(size, "shortest_edge") or min(_side(size, "height"), _side(size, "width"))
        self.crop_to = (_side(crop, "height"), _side(crop, "width")) if processor.do_center_crop else None
        self.model.requires_grad_(False).eval()
        self.init_view()
        embeddings = [self.text_embeddings(list(group)) for prompts in self.classes for group in prompts.prompts]
        class_embeddings = F.normalize(torch.stack([group.mean(dim=0) for group in embeddings]), dim=-1)
        self.register_buffer("class_embeddings", class_embeddings, persistent=False)
        self._prompt_cache: dict[str, Tensor] = {}

    @classmethod
    def from_spec(cls, path: str | Path) -> ZeroShotClassifier:
        """A classifier from a spec file (YAML or JSON) of its options.

        ``clip`` is relative to the file (a folder's ``zero_shot.json`` defaults it to that folder); ``attributes``,
        ``templates`` and ``threshold`` are the constructor's.
        """
        path = Path(path)
        try:
            spec = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        except Exception as error:  # the parser's message does not name the file
            raise ValueError(f"'{path}' is not a YAML or JSON zero-shot classifier spec ({error})") from None
        if not isinstance(spec, dict):
            raise ValueError(f"'{path}' must hold a mapping with 'clip' and 'attributes', got {type(spec).__name__}")
        unknown = sorted(set(spec) - SPEC_KEYS)
        if unknown:
            raise ValueError(f"'{path}': unknown options {unknown}; a zero-shot spec takes {sorted(SPEC_KEYS)}")
        if "clip" not in spec and path.name != SPEC_FILE:
            raise ValueError(f"'{path}': option 'clip' must name a local CLIP folder")
        clip = path.parent / str(spec.get("clip", "."))
        return cls(
            str(clip), spec.get("attributes") or {}, spec.get("templates"), float(spec.get("threshold", 0.0)), str(path)
        )

    @property
    def kind(self) -> str:
        """What it is, in messages."""
        return "zero-shot classifier"

    @property
    def center_crop_fraction(self) -> None:
        """Any view: CLIP was trained on photographs of every framing."""
        return None

    @property
    def input_size(self) -> int:
        """The side its image preprocessing resizes to (before its centre crop)."""
        return int(self.resize_to)

    @property
    def feature_dim(self) -> int:
        """Size of the image embeddings."""
        return int(self.model.config.projection_dim)

    def class_names(self, attribute: str) -> tuple[str, ...]:
        """The names of an attribute's classes, in class order."""
        return self.classes[self.attribute_index(attribute)].class_names

    def text_embeddings(self, prompts: list[str]) -> Tensor:
        """Normalised CLIP text embeddings of ``prompts``, ``(P, projection_dim)``."""
        device = self.image_mean.device if not list(self.model.parameters()) else next(self.model.parameters()).device
        tokens = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(device)
        with torch.no_grad():
            embeddings = self.model.get_text_features(**tokens)
        return F.normalize(_tensor(embeddings), dim=-1)

    def pixel_values(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] as CLIP takes them: resized, centre-cropped and normalised as its processor says.

        The framework's images are square, so resizing the shortest side is resizing the image.
        """
        images = self.to_view(images).clamp(-1, 1)
        if self.crop_to is not None:
            images = center_crop(images, list(self.crop_to))
        mean, std = self.image_mean.to(images), self.image_std.to(images)
        return ((images + 1) / 2 - mean) / std

    def features(self, images: Tensor) -> Tensor:
        """Normalised CLIP image embeddings, ``(B, feature_dim)``, of images in [-1, 1] (``fid_clip``)."""
        embeddings = self.model.get_image_features(pixel_values=self.pixel_values(images))
        return F.normalize(_tensor(embeddings), dim=-1)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """Logits per attribute: cosine similarities to each class embedding times CLIP's logit scale."""
        logits = self.model.logit_scale.exp() * self.features(images) @ self.class_embeddings.T
        return dict(zip(self.attributes, logits.split(self.num_classes, dim=1), strict=True))

    def predict_proba(self, images: Tensor) -> dict[str, Tensor]:
        """Class probabilities per attribute, each ``(B, num_classes)``."""
        return {name: logits.softmax(dim=-1) for name, logits in self(images).items()}

    def abstains(self, probabilities: Tensor) -> Tensor:
        """The samples whose most likely class is less probable than ``threshold`` (``unknown``)."""
        return probabilities.amax(dim=-1) < self.threshold

    def clip_score(self, images: Tensor, prompts: list[str]) -> Tensor:
        """CLIP score of each image against its prompt, ``100 * max(cos, 0)`` (torchmetrics' ``CLIPScore``)."""
        missing = [prompt for prompt in dict.fromkeys(prompts) if prompt not in self._prompt_cache]
        if missing:
            self._prompt_cache.update(zip(missing, self.text_embeddings(missing).cpu(), strict=True))
        text = torch.stack([self._prompt_cache[prompt] for prompt in prompts]).to(images.device)
        return 100 * (self.features(images) * text).sum(dim=-1).clamp(min=0)

    def fingerprint(self) -> str:
        """A digest of the prompts, threshold and weights (what its labels and features depend on)."""
        digest = hashlib.sha256(repr(sorted(self.hparams.items())).encode())
        for name, tensor in self.model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


def load_clip(folder: Path, option: str) -> tuple[CLIPModel, Any, CLIPImageProcessor]:
    """The ``CLIPModel``, tokenizer and image processor of a local folder, or one line saying what is missing."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{option}: no CLIP folder at '{folder.resolve()}' (models are never downloaded)")
    config = read_json(folder / "config.json") or {}
    if config.get("model_type") != "clip":
        raise ValueError(
            f"{option}: '{folder}' holds no CLIPModel (config.json with model_type 'clip'); write one with "
            "CLIPModel.save_pretrained"
        )
    processor = any((folder / name).is_file() for name in PROCESSOR_FILES)
    if not processor or not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise ValueError(
            f"{option}: '{folder}' has no CLIP processor ({' or '.join(PROCESSOR_FILES)} and the tokenizer's files): "
            "write them with CLIPProcessor.save_pretrained into the same folder"
        )
    model = CLIPModel.from_pretrained(folder)
    return model, AutoTokenizer.from_pretrained(folder), CLIPImageProcessor.from_pretrained(folder)


def _side(size: Any, key: str) -> int:
    """An entry of an image processor's ``size``/``crop_size`` (a dict or transformers 5's ``SizeDict``), 0 if unset."""
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value or 0)


def _tensor(output: Any) -> Tensor:
    """The embeddings of a ``get_*_features`` call (a tensor, or a model output holding the pooled embeddings)."""
    return output if isinstance(output, Tensor) else output.pooler_output
