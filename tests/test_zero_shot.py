"""The zero-shot classifier over a local CLIP folder: class prompts, probabilities, abstention, CLIP score, errors."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from latent_model import text_method, write_tiny_clip

from lightning_fair.classifiers import ZeroShotClassifier, load_classifier
from lightning_fair.classifiers.class_prompts import PRESETS
from lightning_fair.metrics import FairnessSuite

GENDER = {"Male": [["a photo of a woman", "a photo of a female"], ["a photo of a man"]]}


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random CLIP of another size than the shipped one (24 px images, 12-d embeddings)."""
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "clip")


def write_spec(folder: Path, spec: dict) -> Path:
    path = folder / "zero_shot.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_probabilities_are_clip_similarities_to_the_ensembled_class_prompts(clip_folder: Path) -> None:
    classifier = ZeroShotClassifier(str(clip_folder), GENDER, templates=["{}"])
    images = torch.rand(5, 3, 32, 32) * 2 - 1
    woman = classifier.text_embeddings(GENDER["Male"][0]).mean(dim=0)
    man = classifier.text_embeddings(GENDER["Male"][1])[0]
    classes = F.normalize(torch.stack([woman, man]), dim=-1)
    pixels = F.interpolate(images, size=(24, 24), mode="bilinear", antialias=True, align_corners=False)
    mean, std = torch.tensor([0.4815, 0.4578, 0.4082]), torch.tensor([0.2686, 0.2613, 0.2758])
    pixels = ((pixels + 1) / 2 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        embedded = classifier.model.get_image_features(pixel_values=pixels)
        embedded = embedded if isinstance(embedded, torch.Tensor) else embedded.pooler_output
        expected = (classifier.model.logit_scale.exp() * F.normalize(embedded, dim=-1) @ classes.T).softmax(dim=-1)
        probabilities = classifier.predict_proba(images)["Male"]
    torch.testing.assert_close(probabilities, expected, atol=1e-4, rtol=1e-4)
    assert classifier.predict(images).shape == (5, 1)
    assert classifier.features(images).shape == (5, 12)
    assert classifier.feature_dim == 12
    assert classifier.class_names("Male") == ("a_photo_of_a_woman", "a_photo_of_a_man")


def test_clip_score_is_100_times_the_positive_cosine(clip_folder: Path) -> None:
    classifier = ZeroShotClassifier(str(clip_folder), GENDER)
    images = torch.rand(4, 3, 24, 24) * 2 - 1
    prompts = ["a photo of a man", "a photo of a woman", "a photo of a man", "a doctor"]
    with torch.no_grad():
        scores = classifier.clip_score(images, prompts)
        cosine = (classifier.features(images) * classifier.text_embeddings(prompts)).sum(dim=-1)
    torch.testing.assert_close(scores, 100 * cosine.clamp(min=0), atol=1e-4, rtol=1e-4)


def test_a_threshold_leaves_unconfident_samples_unknown(clip_folder: Path) -> None:
    classifier = ZeroShotClassifier(str(clip_folder), GENDER, threshold=0.6)
    probabilities = torch.tensor([[0.55, 0.45], [0.1, 0.9], [0.4, 0.6]])
    assert classifier.abstains(probabilities).tolist() == [True, False, False]
    never = ZeroShotClassifier(str(clip_folder), GENDER)
    assert not never.abstains(probabilities).any()


def test_presets_and_the_joint_gender_race_attribute(clip_folder: Path) -> None:
    classifier = ZeroShotClassifier(str(clip_folder), {"Male": "gender", "race": "race7", "joint": "gender_race4"})
    assert classifier.num_classes == [2, 7, 8]
    assert classifier.class_names("joint")[:2] == ("woman_White", "woman_Black")
    assert "a photo of a White woman" in classifier.hparams["attributes"]["joint"][0]
    assert set(PRESETS) >= {"gender", "race4", "race7", "age2", "age3", "gender_race4", "gender_race7"}


def test_it_accepts_any_view_of_the_images(clip_folder: Path) -> None:
    classifier = ZeroShotClassifier(str(clip_folder), GENDER)
    classifier.expect_inputs(0.5, "cropped images")
    assert classifier.predict_proba(torch.zeros(2, 3, 64, 64))["Male"].shape == (2, 2)


def test_load_classifier_reads_a_spec_file_and_a_folder_with_its_prompts(clip_folder: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, {"clip": str(clip_folder), "attributes": {"Male": "gender"}, "threshold": 0.3})
    classifier = load_classifier(str(spec))
    assert isinstance(classifier, ZeroShotClassifier)
    assert classifier.threshold == 0.3
    assert classifier.reference == str(spec)
    assert classifier.attributes == ["Male"]
    folder = tmp_path / "with_prompts"
    shutil.copytree(clip_folder, folder)
    (folder / "zero_shot.json").write_text(json.dumps({"attributes": GENDER, "templates": ["{}"]}))
    assert load_classifier(str(folder)).hparams["attributes"]["Male"] == GENDER["Male"]


def test_a_suite_refuses_an_attribute_the_prompts_do_not_name(clip_folder: Path) -> None:
    classifier = ZeroShotClassifier(str(clip_folder), GENDER)
    with pytest.raises(ValueError, match=r"Option 'sensitive': the zero-shot classifier .* has no attribute 'race'"):
        FairnessSuite(classifier, sensitive="race")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"attributes": GENDER}, r"option 'clip' must name a local CLIP folder"),
        ({"clip": "CLIP", "attributes": {}}, r"option 'attributes' needs the class prompts"),
        ({"clip": "CLIP", "attributes": GENDER, "templates": ["a photo"]}, r"template 'a photo' must hold exactly one"),
        ({"clip": "CLIP", "attributes": {"Male": "genders"}}, r"unknown preset 'genders'"),
        ({"clip": "CLIP", "attributes": {"Male": ["a man"]}}, r"needs at least two classes"),
        ({"clip": "CLIP", "attributes": GENDER, "prompts": []}, r"unknown options \['prompts'\]"),
        ({"clip": "missing", "attributes": GENDER}, r"no CLIP folder at"),
    ],
)
def test_bad_specs_get_one_line_naming_the_file(clip_folder: Path, tmp_path: Path, spec: dict, message: str) -> None:
    spec = {name: str(clip_folder) if value == "CLIP" else value for name, value in spec.items()}
    path = write_spec(tmp_path, spec)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as error:
        load_classifier(str(path))
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_a_clip_folder_without_processor_or_prompts_is_refused(clip_folder: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(clip_folder, bare)
    with pytest.raises(ValueError, match=r"is a CLIP folder without class prompts: write them into zero_shot.json"):
        load_classifier(str(bare))
    (bare / "processor_config.json").unlink()
    path = write_spec(tmp_path, {"clip": str(bare), "attributes": GENDER})
    message = r"has no CLIP processor \(preprocessor_config.json or processor_config.json"
    with pytest.raises(ValueError, match=message) as error:
        load_classifier(str(path))
    assert str(bare) in str(error.value)


def test_a_zero_shot_classifier_evaluates_a_text_to_image_run(
    clip_folder: Path, tiny_setup: Callable[..., Path], tiny_sd: Path, tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    """As the evaluator's classifier: CLIP-space quality (fid_clip), CLIP score, an unknown share."""
    from lightning_fair.main import main

    attributes = {"Male": [["a woman"], ["a man"]], "Blond_Hair": [["dark hair"], ["blond hair"]]}
    spec = write_spec(tmp_path, {"clip": str(clip_folder), "attributes": attributes, "threshold": 0.5001})
    setup = tiny_setup(backbone=tiny_sd, prompts={"neutral": ["a photo of a nurse", "a photo of a pilot"]})
    method = write_config("plain", text_method("plain", "PlainSampling", num_samples=4, batch_size=4))
    main(["test", "-c", str(setup), "-c", str(method), f"--classifier={spec}"])
    record = json.loads(next((tmp_path / "runs" / "plain").rglob("metrics.json")).read_text())
    metrics = record["metrics"]
    assert "fid_clip" in metrics
    assert "fid_cls" not in metrics
    assert 0 <= metrics["clip_score"] <= 100
    assert 0 <= metrics["unknown/Male"] <= 1
    known = [metrics["proportion/Male=0"], metrics["proportion/Male=1"]]
    assert metrics["unknown/Male"] == 1 or sum(known) == pytest.approx(1)
    assert [entry["metrics"]["num_samples"] for entry in record["per_prompt"]] == [4, 4]
    assert record["across_prompts"]["clip_score"]["mean"] == pytest.approx(metrics["clip_score"])


def test_the_fairface_spec_builds_its_attributes(clip_folder: Path, tmp_path: Path) -> None:
    spec = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/classifiers/clip_fairface.yaml").read_text())
    classifier = load_classifier(str(write_spec(tmp_path, {**spec, "clip": str(clip_folder)})))
    assert dict(zip(classifier.attributes, classifier.num_classes, strict=True)) == {
        "Male": 2,
        "race": 7,
        "age": 3,
        "gender_race": 14,
    }
