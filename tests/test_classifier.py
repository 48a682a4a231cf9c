"""AttributeClassifier: outputs, augmentation, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_fair.classifiers import AttributeClassifier


@pytest.fixture
def classifier() -> AttributeClassifier:
    torch.manual_seed(0)
    return AttributeClassifier(["Male", "Race"], num_classes=[2, 4], model_name="test_resnet", image_size=16).eval()


def test_outputs(classifier: AttributeClassifier) -> None:
    images = torch.rand(5, 3, 16, 16) * 2 - 1
    probabilities = classifier.predict_proba(images)
    assert probabilities["Male"].shape == (5, 2)
    assert probabilities["Race"].shape == (5, 4)
    torch.testing.assert_close(probabilities["Race"].sum(dim=1), torch.ones(5))
    predictions = classifier.predict(images)
    assert predictions.shape == (5, 2)
    assert torch.equal(predictions[:, 1], probabilities["Race"].argmax(dim=1))
    assert classifier.features(images).shape == (5, classifier.feature_dim)


def test_other_resolution_is_resized(classifier: AttributeClassifier) -> None:
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    small = torch.nn.functional.interpolate(images, size=(16, 16), mode="bilinear", antialias=True)
    torch.testing.assert_close(classifier.features(images), classifier.features(small))


def test_augmentation_changes_part_of_the_batch(classifier: AttributeClassifier) -> None:
    torch.manual_seed(1)
    images = torch.zeros(64, 3, 16, 16)
    images[:, :, 4:12, 4:12] = 1
    augmented = classifier.augment(images)
    changed = (augmented - images).abs().flatten(1).amax(dim=1) > 1e-6
    assert augmented.shape == images.shape
    assert 0 < changed.float().mean() < 1


def test_invalid_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'num_classes' has 1 entries for 2 attributes"):
        AttributeClassifier(["a", "b"], num_classes=[2], model_name="test_resnet")
    with pytest.raises(ValueError, match="unknown timm architecture 'no_such_net'"):
        AttributeClassifier(["a"], model_name="no_such_net")
    with pytest.raises(FileNotFoundError, match="'weights': no file at"):
        AttributeClassifier(["a"], model_name="test_resnet", weights=str(tmp_path / "missing.pth"))


def test_local_weights_file_initialises_backbone(classifier: AttributeClassifier, tmp_path: Path) -> None:
    path = tmp_path / "backbone.pth"
    torch.save(classifier.backbone.state_dict(), path)
    loaded = AttributeClassifier(["Male", "Race"], [2, 4], model_name="test_resnet", weights=str(path), image_size=16)
    for name, tensor in classifier.backbone.state_dict().items():
        torch.testing.assert_close(loaded.backbone.state_dict()[name], tensor)
    assert loaded.hparams["weights"] is None  # a checkpoint must load without the file


def test_unknown_attribute(classifier: AttributeClassifier) -> None:
    with pytest.raises(ValueError, match="no attribute 'Young'; it predicts \\['Male', 'Race'\\]"):
        classifier.attribute_index("Young")
