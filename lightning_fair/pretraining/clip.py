"""Training a tiny CLIP contrastively on images and captions of their attributes (a zero-shot classifier)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from lightning_fair.classifiers.zero_shot import SPEC_FILE
from lightning_fair.data.captions import PREFIX, CaptionWriter, caption_words, zero_shot_classes
from lightning_fair.data.vocabulary import build_tokenizer, write_tokenizer
from lightning_fair.diffusion.seeding import NOISE_STREAM, sample_generators, training_generators
from lightning_fair.pretraining.ema import EMAPretraining
from lightning_fair.utils.options import check_ranges


class CLIPPretraining(EMAPretraining):
    """Trains a ``CLIPModel`` from scratch on images and captions written from their attributes.

    Captions come from :class:`~lightning_fair.data.captions.CaptionWriter` (never empty here), drawn from
    ``(seed, epoch, image index)``, and tokenized by a CLIP tokenizer that holds every caption word as one token. The
    loss is CLIP's symmetric cross-entropy over the batch's image-caption similarities (learned logit scale), with
    every image of the same caption counted as a match: the captions repeat within a batch, and an identical caption
    is no negative. EMA weights with warm-up, as every pretraining here.

    At the end of ``fit`` the weights of lower validation loss are written into ``output_dir`` with
    ``CLIPModel.save_pretrained``, the tokenizer and a ``CLIPImageProcessor`` (so ``CLIPProcessor.from_pretrained``
    loads the folder), and ``zero_shot.json``: class prompts per attribute the captions name, so that the folder is a
    zero-shot attribute classifier as it is (``classifier: <folder>``).

    Args:
        output_dir: folder the model is written to (replaced atomically).
        attributes: the DataModule's attribute names (order of the batch's ``attributes`` columns).
        image_size: side of the square training images (CLIP's input size).
        patch_size: side of the vision transformer's patches.
        vision_hidden_size: width of the vision transformer.
        vision_layers: its layers.
        text_hidden_size: width of the text transformer.
        text_layers: its layers.
        heads: attention heads of both transformers.
        projection_dim: size of the joint embedding.
        max_prompt_length: tokens of a caption, start and end tokens included.
        person_probability: probability of writing ``person`` in place of ``man`` or ``woman``.
        phrase_dropout: probability of leaving out each attribute phrase of a caption.
        learning_rate: AdamW learning rate after warm-up.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up steps.
        ema_decay: largest decay of the exponential moving average of the weights.
        ema_inv_gamma: warm-up of the EMA decay: the step scale of its growth.
        ema_power: warm-up of the EMA decay: the exponent of its growth.
        seed: seed of the captions drawn for each image.
    """

    def __init__(
        self,
        output_dir: str,
        attributes: list[str],
        image_size: int = 32,
        patch_size: int = 4,
        vision_hidden_size: int = 64,
        vision_layers: int = 3,
        text_hidden_size: int = 64,
        text_layers: int = 2,
        heads: int = 4,
        projection_dim: int = 64,
        max_prompt_length: int = 32,
        person_probability: float = 0.25,
        phrase_dropout: float = 0.3,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_steps: int = 100,
        ema_decay: float = 0.999,
        ema_inv_gamma: float = 1.0,
        ema_power: float = 0.75,
        seed: int = 0,
    ) -> None:
        check_ranges(positive={"patch_size": patch_size, "heads": heads, "projection_dim": projection_dim})
        for name, width in (("vision_hidden_size", vision_hidden_size), ("text_hidden_size", text_hidden_size)):
            if width % heads:
                raise ValueError(f"Option 'heads' ({heads}) must divide '{name}' ({width})")
        if image_size % patch_size:
            raise ValueError(f"Option 'patch_size' ({patch_size}) must divide 'image_size' ({image_size})")
        super().__init__(
            output_dir, image_size, learning_rate, weight_decay, warmup_steps, ema_decay, ema_inv_gamma, ema_power, seed
        )
        self.save_hyperparameters()
        self.attributes = list(attributes)
        self.captions = CaptionWriter(attributes, person_probability, phrase_dropout, empty_probability=0.0)
        self.max_prompt_length = max_prompt_length
        self.tokenizer = build_tokenizer(caption_words(), max_prompt_length)
        config = CLIPConfig(
            text_config={
                "vocab_size": len(self.tokenizer),
                "hidden_size": text_hidden_size,
                "intermediate_size": 4 * text_hidden_size,
                "num_hidden_layers": text_layers,
                "num_attention_heads": heads,
                "max_position_embeddings": max_prompt_length,
                "bos_token_id": self.tokenizer.bos_token_id,
                "eos_token_id": self.tokenizer.eos_token_id,
                "pad_token_id": self.tokenizer.pad_token_id,
            },
            vision_config={
                "image_size": image_size,
                "patch_size": patch_size,
                "hidden_size": vision_hidden_size,
                "intermediate_size": 4 * vision_hidden_size,
                "num_hidden_layers": vision_layers,
                "num_attention_heads": heads,
            },
            projection_dim=projection_dim,
        )
        self.clip = CLIPModel(config)
        self.average()

    @property
    def trained(self) -> nn.Module:
        """The CLIP model."""
        return self.clip

    def contrastive_loss(self, model: CLIPModel, images: Tensor, captions: list[str]) -> Tensor:
        """CLIP's symmetric cross-entropy, every image of the same caption a match of that caption."""
        tokens = self.tokenizer(captions, padding=True, truncation=True, return_tensors="pt").to(images.device)
        output = model(pixel_values=images, **tokens)
        logits = output.logits_per_image  # (images, captions), already times the logit scale
        codes = {caption: code for code, caption in enumerate(dict.fromkeys(captions))}
        labels = torch.tensor([codes[caption] for caption in captions], device=images.device)
        matches = (labels[:, None] == labels[None, :]).float()
        targets = matches / matches.sum(dim=1, keepdim=True)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Contrastive loss of the batch's images and captions drawn from ``(seed, epoch, image index)``."""
        generators = training_generators(self.seed, self.current_epoch, batch["index"])
        loss = self.contrastive_loss(self.clip, batch["image"], self.captions(batch["attributes"], generators))
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_losses(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Contrastive loss of ``model`` on the batch, captions drawn from ``(seed, image index)``."""
        generators = sample_generators(self.seed, batch["index"], NOISE_STREAM)
        with torch.no_grad():
            loss = self.contrastive_loss(model, batch["image"], self.captions(batch["attributes"], generators))
        return {"loss": loss}

    def write(self, folder: Path, model: nn.Module) -> None:
        """Writes the CLIP model, its tokenizer and image processor, and ``zero_shot.json``."""
        model.save_pretrained(folder)
        write_tokenizer(folder, caption_words(), self.max_prompt_length)
        size = self.image_size
        CLIPImageProcessor(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
            image_mean=[0.5, 0.5, 0.5],  # the framework's images: [0, 1] to [-1, 1]
            image_std=[0.5, 0.5, 0.5],
        ).save_pretrained(folder)
        spec = {"templates": [f"{PREFIX} {{}}"], "attributes": zero_shot_classes(self.attributes)}
        (folder / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
