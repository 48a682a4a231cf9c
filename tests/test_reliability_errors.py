"""Bad input gets one line naming what was wrong; classifiers carry their view; CPU defaults and logged progress."""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

from lightning_fair.callbacks import FairnessEvaluator
from lightning_fair.callbacks.progress_log import ProgressLog
from lightning_fair.classifiers import AttributeClassifier, load_classifier
from lightning_fair.cli import build_cli
from lightning_fair.data import CelebADataModule, GenerationRequests
from lightning_fair.data.base import available_workers
from lightning_fair.main import configuration_error, main
from lightning_fair.methods import ConditionalSampling, DistributionGuidance
from lightning_fair.metrics import validate_distribution
from lightning_fair.pretraining import DiffusionPretraining

REPO_ROOT = Path(__file__).resolve().parents[1]
UNET_EXPECTED = (
    "expected a diffusers UNet2DModel folder (config.json and diffusion_pytorch_model.safetensors) or a pipeline "
    "folder with one in unet/, or a StableDiffusionPipeline folder (model_index.json and unet/, vae/, text_encoder/, "
    "tokenizer/, scheduler/, as written by StableDiffusionPipeline.save_pretrained), or a StableDiffusionXLPipeline "
    "folder (model_index.json and unet/, vae/, text_encoder/, text_encoder_2/, tokenizer/, tokenizer_2/, scheduler/, "
    "as written by StableDiffusionXLPipeline.save_pretrained)"
)
UNREADABLE = (
    "is not a readable checkpoint (UnpicklingError); expected a file written by Lightning or torch.save holding "
    "only tensors and plain values"
)


def dg_config(
    write_config: Callable, backbone: Path, classifier: Path, faces_root: Path, attribute: str = "Male"
) -> Path:
    """A Distribution Guidance config of the tiny models whose evaluator interpolates the model's options."""
    evaluator = {
        "classifier": "${model.init_args.classifier}",
        "sensitive": "Male",
        "target_distribution": "${model.init_args.target_distributions.Male}",
    }
    images = {
        "root": faces_root,
        "attributes": ["Male", "Blond_Hair"],
        "sensitive": "Male",
        "image_size": 32,
        "batch_size": 8,
        "num_workers": 0,
    }
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_epochs": 1,
            "limit_train_batches": 1,
            "limit_val_batches": 1,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "logger": False,
            "enable_checkpointing": False,
            "callbacks": [{"class_path": "FairnessEvaluator", "init_args": evaluator}],
        },
        "model": {
            "class_path": "DistributionGuidance",
            "init_args": {
                "backbone": backbone,
                "classifier": classifier,
                "target_distributions": {attribute: [0.5, 0.5]},
                "sampler": {"num_inference_steps": 5},
            },
        },
        "data": {
            "class_path": "GenerationRequests",
            "init_args": {
                "num_samples": 2,
                "batch_size": 2,
                "train_data": {"class_path": "CelebADataModule", "init_args": images},
            },
        },
    }
    return write_config(f"dg_{attribute}", config)


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs each test in its own folder (the command line writes its config where it runs)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def dg(write_config: Callable, tiny_backbone: Path, tiny_classifier: Path, faces_root: Path) -> Path:
    return dg_config(write_config, tiny_backbone, tiny_classifier, faces_root)


@pytest.fixture
def random_file(tmp_path: Path) -> Path:
    """Random bytes on which torch.load suggests `weights_only=False`."""
    generator = random.Random(0)
    path = tmp_path / "random.ckpt"
    path.write_bytes(bytes(generator.getrandbits(8) for _ in range(2048)))
    return path


# ------------------------------------------------------------------------------------------- models and checkpoints


def test_config_only_folder_as_backbone(dg: Path, tmp_path: Path, tiny_backbone: Path, cli_error) -> None:
    folder = tmp_path / "config_only"
    folder.mkdir()
    shutil.copy(tiny_backbone / "unet" / "config.json", folder)
    line = cli_error(["test", "-c", str(dg), f"--model.init_args.backbone={folder}"])
    assert line == (
        f"error: Option 'backbone': '{folder}' is a diffusers UNet2DModel folder with config.json only, no weights "
        f"file; {UNET_EXPECTED}"
    )


def test_classifier_folder_as_backbone(dg: Path, tiny_classifier: Path, cli_error) -> None:
    line = cli_error(["test", "-c", str(dg), f"--model.init_args.backbone={tiny_classifier}"])
    assert line == (
        f"error: Option 'backbone': '{tiny_classifier}' is an attribute-classifier folder (model.safetensors); "
        f"{UNET_EXPECTED}"
    )


def test_missing_classifier_hint_fits_a_classifier(dg: Path, tmp_path: Path, cli_error) -> None:
    missing = tmp_path / "no_classifier"
    line = cli_error(["test", "-c", str(dg), f"--model.init_args.classifier={missing}"])
    assert line.startswith(f"error: No attribute classifier at '{missing}' and no shipped model named '{missing}'")
    assert line.endswith(
        "Models are never downloaded: train one with `lightning-fair fit -c configs/setups/<setup>.yaml -c "
        "configs/training/classifier.yaml`, "
        "or give the path of a local one."
    )


def test_random_bytes_as_classifier(dg: Path, random_file: Path, cli_error) -> None:
    line = cli_error(["test", "-c", str(dg), f"--model.init_args.classifier={random_file}"])
    assert line == f"error: Option 'classifier': '{random_file}' {UNREADABLE}"


def test_random_bytes_as_ckpt_path(dg: Path, random_file: Path, cli_error) -> None:
    line = cli_error(["test", "-c", str(dg), f"--ckpt_path={random_file}"])
    assert line == f"error: Option '--ckpt_path': '{random_file}' {UNREADABLE}"


def test_checkpoint_of_another_kind_as_classifier(tiny_backbone: Path, tmp_path: Path) -> None:
    trainer = Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.strategy.connect(ConditionalSampling(str(tiny_backbone)))
    trainer.save_checkpoint(tmp_path / "method.ckpt")
    message = (
        f"Option 'classifier': '{tmp_path / 'method.ckpt'}' is a checkpoint of ConditionalSampling; expected an "
        "AttributeClassifier checkpoint (.ckpt), a folder written by its save_pretrained (config.json and "
        "model.safetensors), a zero-shot spec (.yaml/.yml/.json) or a CLIP folder with its zero_shot.json"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        load_classifier(str(tmp_path / "method.ckpt"))


def test_checkpoint_with_other_sampler_steps(
    dg: Path, tiny_backbone: Path, tiny_classifier: Path, tmp_path: Path, cli_error
) -> None:
    method = DistributionGuidance(
        str(tiny_backbone), str(tiny_classifier), {"Male": [0.5, 0.5]}, sampler={"num_inference_steps": 5}
    )
    trainer = Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.strategy.connect(method)
    checkpoint = tmp_path / "steps5.ckpt"
    trainer.save_checkpoint(checkpoint)
    args = ["test", "-c", str(dg), f"--ckpt_path={checkpoint}", "--model.init_args.sampler.num_inference_steps=25"]
    assert cli_error(args) == (
        f"error: The checkpoint '{checkpoint}' does not fit this DistributionGuidance: "
        "model.init_args.sampler.num_inference_steps is 5 in the checkpoint and 25 here. Set the options back to the "
        "checkpoint's values to use it, or run `fit` again with the new ones"
    )


def test_classifier_checkpoint_as_method_checkpoint(dg: Path, tmp_path: Path, cli_error) -> None:
    trainer = Trainer(logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.strategy.connect(AttributeClassifier(["Male"], model_name="test_resnet"))
    checkpoint = tmp_path / "classifier.ckpt"
    trainer.save_checkpoint(checkpoint)
    assert cli_error(["test", "-c", str(dg), f"--ckpt_path={checkpoint}"]) == (
        f"error: The checkpoint '{checkpoint}' was written by no debiasing method (it has no 'lightning_fair' "
        "record), not by DistributionGuidance"
    )
    assert load_classifier(str(checkpoint)).attributes == ["Male"]


def test_damaged_weights_files_are_named(tiny_backbone: Path, tiny_classifier: Path, tmp_path: Path) -> None:
    classifier = shutil.copytree(tiny_classifier, tmp_path / "classifier")
    (classifier / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=re.escape(f"'{classifier / 'model.safetensors'}' cannot be read (")):
        load_classifier(str(classifier))
    backbone = shutil.copytree(tiny_backbone, tmp_path / "backbone")
    (backbone / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    message = f"Option 'backbone': the UNet2DModel in '{backbone / 'unet'}' cannot be loaded ("
    with pytest.raises(ValueError, match=re.escape(message)):
        ConditionalSampling(str(backbone))


# ---------------------------------------------------------------------------------------------------- options


def test_data_image_size_against_the_backbone(dg: Path, faces_root: Path, tiny_backbone: Path, cli_error) -> None:
    line = cli_error(["fit", "-c", str(dg), "--data.init_args.train_data.init_args.image_size=64"])
    assert line == (
        f"error: Option 'image_size' of the training images of '{faces_root}' is 64 (3x64x64 images) but the "
        f"backbone '{tiny_backbone}' works on 3x32x32 images: set the data's image_size to 32"
    )


def test_misspelt_attribute_names_the_interpolating_option(
    write_config: Callable, tiny_backbone: Path, tiny_classifier: Path, faces_root: Path, cli_error
) -> None:
    config = dg_config(write_config, tiny_backbone, tiny_classifier, faces_root, attribute="Mael")
    assert cli_error(["test", "-c", str(config)]) == (
        "error: Option trainer.callbacks[0].init_args.target_distribution refers to "
        "model.init_args.target_distributions.Male, which the config does not set"
    )


def test_misspelt_attribute_is_named_by_the_method(tiny_backbone: Path, tiny_classifier: Path) -> None:
    message = (
        f"Option 'target_distributions': the attribute classifier '{tiny_classifier}' has no attribute 'Mael'; "
        "it predicts ['Male', 'Blond_Hair']"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        DistributionGuidance(str(tiny_backbone), str(tiny_classifier), {"Mael": [0.5, 0.5]})


def test_wrong_target_names_the_option_the_user_set(dg: Path, cli_error) -> None:
    line = cli_error(["test", "-c", str(dg), "--model.init_args.target_distributions.Male=[0.3, 0.8]"])
    assert line == "error: 'target_distributions.Male' must sum to 1, got [0.3, 0.8] (sum 1.1)"


def test_negative_guidance_scale(dg: Path, cli_error) -> None:
    line = cli_error(["test", "-c", str(dg), "--model.init_args.guidance_scale=-5"])
    assert line == "error: Option 'guidance_scale' must be non-negative, got -5.0 for 'Male'"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"guidance_scale": {"Male": -1.0}}, "Option 'guidance_scale' must be non-negative, got -1.0 for 'Male'"),
        ({"loss_weight": -300.0}, "Option 'loss_weight' must be non-negative, got -300.0"),
        ({"step_size": -1.5}, "Option 'step_size' must be non-negative, got -1.5"),
        ({"beta_exponent": -0.05}, "Option 'beta_exponent' must be non-negative, got -0.05"),
        ({"weight_decay": -1.0}, "Option 'weight_decay' must be non-negative, got -1.0"),
        ({"temperature": 0.0}, "Option 'temperature' must be positive, got 0.0"),
        ({"hidden_features": 0}, "Option 'hidden_features' must be positive, got 0"),
        ({"learning_rate": 0.0}, "Option 'learning_rate' must be positive, got 0.0"),
        (
            {"first_guided_step": 4},
            "Option 'first_guided_step' must lie in 0..3 (the sampler's num_inference_steps is 4: a later first "
            "step guides nothing), got 4",
        ),
    ],
)
def test_guidance_numbers_are_checked(tiny_backbone: Path, tiny_classifier: Path, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        DistributionGuidance(
            str(tiny_backbone), str(tiny_classifier), {"Male": [0.5, 0.5]}, {"num_inference_steps": 4}, **options
        )


def test_negative_classifier_free_guidance(tiny_backbone: Path) -> None:
    with pytest.raises(ValueError, match=re.escape("Sampler option 'cfg_scale' must be non-negative, got -2.0")):
        ConditionalSampling(str(tiny_backbone), sampler={"cfg_scale": -2.0})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"learning_rate": 0.0}, "Option 'learning_rate' must be positive, got 0.0"),
        ({"center_crop_fraction": 0.0}, "Option 'center_crop_fraction' must be positive, got 0.0"),
        ({"augment_probability": 1.5}, "Option 'augment_probability' must lie in [0, 1], got 1.5"),
        ({"max_noise_std": -0.1}, "Option 'max_noise_std' must be non-negative, got -0.1"),
        ({"image_size": 0}, "Option 'image_size' must be positive, got 0"),
        ({"center_crop_fraction": -0.5}, "Option 'center_crop_fraction' must be positive, got -0.5"),
    ],
)
def test_classifier_numbers_are_checked(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        AttributeClassifier(["Male"], model_name="test_resnet", **options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"center_crop": 0}, "Option 'center_crop' must be positive, got 0"),
        ({"eval_batch_size": 0}, "Option 'eval_batch_size' must be positive, got 0"),
        ({"max_samples_per_split": 0}, "Option 'max_samples_per_split' must be positive, got 0"),
        ({"num_workers": -1}, "Option 'num_workers' must be 'auto' or a non-negative number, got -1"),
    ],
)
def test_data_numbers_are_checked(faces_root: Path, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        CelebADataModule(str(faces_root), ["Male"], "Male", **options)


def test_center_crop_larger_than_the_images(faces_root: Path) -> None:
    data = CelebADataModule(str(faces_root), ["Male"], "Male", center_crop=40)
    with pytest.raises(ValueError, match=re.escape("Option 'center_crop' (40) is larger than the shorter side of the")):
        _ = data.center_crop_fraction


def test_a_real_bug_keeps_its_traceback() -> None:
    """Only the package's own checks become one line; an error inside a library (a bug) is not hidden."""
    with pytest.raises(ValueError, match="must sum to 1") as checked:
        validate_distribution([0.3, 0.8], 2, "target_distributions.Male")
    assert configuration_error(checked.value) == "'target_distributions.Male' must sum to 1, got [0.3, 0.8] (sum 1.1)"
    with pytest.raises(RuntimeError) as bug:
        torch.zeros(2, 3) @ torch.zeros(2, 3)
    assert configuration_error(bug.value) is None


# --------------------------------------------------------------------------------------- the classifier's last batch


def test_classifier_train_split_of_129_with_batch_128(faces_root: Path, tmp_path: Path) -> None:
    """The last batch of one image is dropped (BatchNorm cannot train on it): the epoch ends with a checkpoint."""
    data = CelebADataModule(
        str(faces_root), ["Male"], "Male", image_size=32, batch_size=128, max_samples_per_split=129, num_workers=0
    )
    classifier = AttributeClassifier(["Male"], model_name="test_resnet", image_size=32)
    trainer = Trainer(
        max_epochs=1, limit_val_batches=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(classifier, data)
    assert len(data.dataset("train")) == 129
    assert trainer.num_training_batches == 1
    assert trainer.global_step == 1
    assert list((tmp_path / "checkpoints").glob("*.ckpt"))


def test_train_split_too_small_to_train(faces_root: Path) -> None:
    data = CelebADataModule(str(faces_root), ["Male"], "Male", image_size=32, max_samples_per_split=1, num_workers=0)
    with pytest.raises(ValueError, match="has 1 image\\(s\\): too few to train on 1 process\\(es\\)"):
        data.train_dataloader()


# ------------------------------------------------------------------------------------ the classifier's preprocessing


@pytest.fixture
def cropped_classifier() -> AttributeClassifier:
    """A classifier that was trained on the centre half of its source images, at 16 pixels."""
    torch.manual_seed(0)
    return AttributeClassifier(
        ["Male", "Blond_Hair"], model_name="test_resnet", image_size=16, center_crop_fraction=0.5
    )


def test_classifier_crops_uncropped_images_to_its_view(cropped_classifier: AttributeClassifier) -> None:
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    cropped = images[..., 8:24, 8:24]
    with torch.no_grad():
        cropped_classifier.expect_inputs(1.0, "uncropped images")
        from_uncropped = cropped_classifier.predict_proba(images)
        cropped_classifier.expect_inputs(0.5, "cropped images")
        from_cropped = cropped_classifier.predict_proba(cropped)
    for name in ("Male", "Blond_Hair"):
        torch.testing.assert_close(from_uncropped[name], from_cropped[name], rtol=0, atol=0)


def test_classifier_refuses_images_it_cannot_crop(cropped_classifier: AttributeClassifier) -> None:
    images = torch.rand(2, 3, 32, 32)
    unknown = (
        "The attribute classifier was trained on a centre crop of 0.5 of its source images, but the view of the "
        "given images (declare it with expect_inputs) is unknown"
    )
    with pytest.raises(ValueError, match=re.escape(unknown)):
        cropped_classifier.predict(images)
    narrower = "The attribute classifier was trained on a centre crop of 0.5 of its source images, but the tiles show "
    with pytest.raises(ValueError, match=re.escape(narrower + "only 0.25 of theirs (a narrower view)")):
        cropped_classifier.expect_inputs(0.25, "the tiles")


def test_classifier_records_the_view_of_its_training_data(faces_root: Path, tmp_path: Path) -> None:
    data = CelebADataModule(str(faces_root), ["Male"], "Male", image_size=16, center_crop=24, num_workers=0)
    classifier = AttributeClassifier(["Male"], model_name="test_resnet", image_size=16)
    trainer = Trainer(
        max_steps=1, limit_val_batches=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(classifier, data)
    assert data.center_crop_fraction == 0.75  # 24 of the 32-pixel source images
    [checkpoint] = (tmp_path / "checkpoints").glob("*.ckpt")
    assert torch.load(checkpoint, weights_only=True)["hyper_parameters"]["center_crop_fraction"] == 0.75
    assert load_classifier(str(checkpoint)).center_crop_fraction == 0.75
    folder = classifier.save_pretrained(tmp_path / "pretrained")
    assert json.loads((folder / "config.json").read_text())["center_crop_fraction"] == 0.75
    assert load_classifier(str(folder)).center_crop_fraction == 0.75
    with pytest.raises(ValueError, match=re.escape("Option 'center_crop_fraction' (0.5) differs from the view")):
        Trainer(max_steps=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path / "other").fit(
            AttributeClassifier(["Male"], model_name="test_resnet", center_crop_fraction=0.5), data
        )


def test_classifier_checkpoint_brings_its_view(faces_root: Path, tmp_path: Path) -> None:
    """A config cannot know the view of a checkpoint's weights: testing other data crops to it, resuming refuses."""
    cropped = CelebADataModule(str(faces_root), ["Male"], "Male", image_size=16, center_crop=24, num_workers=0)
    whole = CelebADataModule(str(faces_root), ["Male"], "Male", image_size=16, num_workers=0)
    trainer = Trainer(
        max_steps=1, limit_val_batches=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(AttributeClassifier(["Male"], model_name="test_resnet", image_size=16), cropped)
    [checkpoint] = (tmp_path / "checkpoints").glob("*.ckpt")
    classifier = AttributeClassifier(["Male"], model_name="test_resnet", image_size=16)
    Trainer(limit_test_batches=1, logger=False, enable_progress_bar=False).test(classifier, whole, ckpt_path=checkpoint)
    assert (classifier.center_crop_fraction, classifier.input_crop_fraction) == (0.75, 1.0)
    resumed = Trainer(max_steps=2, logger=False, enable_progress_bar=False, default_root_dir=tmp_path / "resumed")
    message = "The checkpoint was trained on a centre crop of 0.75 of the source images but the training data shows 1"
    with pytest.raises(ValueError, match=re.escape(message)):
        resumed.fit(AttributeClassifier(["Male"], model_name="test_resnet", image_size=16), whole, ckpt_path=checkpoint)


def test_shipped_classifiers_saw_whole_images() -> None:
    for name in ("synthetic_faces_classifier", "synthetic_waterbirds_classifier"):
        assert load_classifier(name).hparams["center_crop_fraction"] == 1.0


def backbone_with_view(source: Path, folder: Path, crop_fraction: float | None) -> Path:
    """A copy of a diffusers folder whose record gives the view of its training images."""
    shutil.copytree(source, folder)
    record = json.loads((folder / "lightning_fair.json").read_text())
    (folder / "lightning_fair.json").write_text(json.dumps({**record, "center_crop_fraction": crop_fraction}))
    return folder


def test_evaluator_applies_the_classifier_view_to_generated_images(
    cropped_classifier: AttributeClassifier, tiny_backbone: Path, tmp_path: Path
) -> None:
    folder = cropped_classifier.save_pretrained(tmp_path / "cropped", half_precision=False)
    evaluator = FairnessEvaluator(classifier=str(folder), sensitive="Male")
    images = torch.rand(6, 3, 32, 32) * 2 - 1
    unknown = ConditionalSampling(str(backbone_with_view(tiny_backbone, tmp_path / "unknown", None)))
    with pytest.raises(ValueError, match="but the view of the images of the backbone '.*unknown' is unknown"):
        evaluator.on_test_start(Trainer(logger=False), unknown)
    uncropped = ConditionalSampling(str(backbone_with_view(tiny_backbone, tmp_path / "whole", 1.0)))
    evaluator.on_test_start(Trainer(logger=False), uncropped)
    evaluator.suite.update(images)
    proportions = evaluator.suite.compute().proportions["Male"][1]
    reference = load_classifier(str(folder))
    reference.expect_inputs(0.5, "centre crops")
    with torch.no_grad():
        expected = reference.predict(images[..., 8:24, 8:24])[:, 0].float().mean().item()
    assert proportions == pytest.approx(expected)


def test_pretraining_records_the_view_of_its_training_data(faces_root: Path, tmp_path: Path) -> None:
    module = DiffusionPretraining(
        output_dir=str(tmp_path / "unet"), image_size=16, block_out_channels=(8, 16), norm_num_groups=4
    )
    data = CelebADataModule(str(faces_root), ["Male"], "Male", image_size=16, center_crop=24, num_workers=0)
    trainer = Trainer(
        max_steps=1, limit_val_batches=0, logger=False, enable_progress_bar=False, default_root_dir=tmp_path
    )
    trainer.fit(module, data)
    assert json.loads((tmp_path / "unet" / "lightning_fair.json").read_text())["center_crop_fraction"] == 0.75


def test_guidance_training_data_must_show_the_backbone_view(
    tiny_backbone: Path, tiny_classifier: Path, faces_root: Path, tmp_path: Path
) -> None:
    backbone = backbone_with_view(tiny_backbone, tmp_path / "whole", 1.0)
    method = DistributionGuidance(str(backbone), str(tiny_classifier), {"Male": [0.5, 0.5]}, {"num_inference_steps": 2})
    train_data = CelebADataModule(str(faces_root), ["Male"], "Male", image_size=32, center_crop=24, num_workers=0)
    message = (
        f"Option 'center_crop' of the training images of '{faces_root}' (24) keeps 0.75 of the source images' shorter "
        f"side but the backbone '{backbone}' was trained on 1 of it: set the data's center_crop to match"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        Trainer(max_steps=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path).fit(
            method, GenerationRequests(train_data=train_data)
        )


# ------------------------------------------------------------------------------------------ CPU defaults, progress


@pytest.mark.parametrize(
    ("cores", "processes", "workers"), [(1, 1, 0), (2, 1, 1), (6, 1, 5), (64, 1, 8), (16, 8, 1), (16, 2, 7)]
)
def test_auto_workers_fit_the_machine(
    monkeypatch: pytest.MonkeyPatch, faces_root: Path, cores: int, processes: int, workers: int
) -> None:
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)))
    assert available_workers(processes) == workers
    if processes == 1:
        assert CelebADataModule(str(faces_root), ["Male"], "Male").train_dataloader().num_workers == workers


@pytest.mark.parametrize("dataset", ["celeba", "waterbirds"])
def test_classifier_configs_ask_for_the_workers_the_machine_has(dataset: str, tmp_path: Path) -> None:
    setup, config = (
        REPO_ROOT / "configs" / "setups" / f"{dataset}.yaml",
        REPO_ROOT / "configs" / "training" / "classifier.yaml",
    )
    cli = build_cli(["-c", str(setup), "-c", str(config), "--trainer.logger=false"], run=False)
    assert cli.datamodule.num_workers == "auto"
    assert cli.datamodule.workers == available_workers()


@pytest.fixture
def progress_lines() -> Iterator[list[str]]:
    """The lines Lightning's logger writes while the test runs."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("lightning.pytorch")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def test_progress_log_writes_a_line_per_interval(faces_root: Path, tmp_path: Path, progress_lines: list[str]) -> None:
    data = CelebADataModule(str(faces_root), ["Male"], "Male", image_size=16, batch_size=60, num_workers=0)
    trainer = Trainer(
        max_epochs=2, limit_val_batches=1, logger=False, default_root_dir=tmp_path, callbacks=[ProgressLog(0)]
    )
    trainer.fit(AttributeClassifier(["Male"], model_name="test_resnet", image_size=16), data)
    training = [line for line in progress_lines if line.startswith("Training")]
    time = r"\d:\d\d:\d\d"
    pattern = rf"Training epoch {{}}/2: batch {{}}/4 \({{}}%\), {time} elapsed, {time} left, train/loss=[\d.e+-]+"
    pattern += r"(, val/acc_mean=[\d.e+-]+)?"
    expected = [(epoch, batch, batch * 25) for epoch in (1, 2) for batch in (1, 2, 3, 4)]
    assert len(training) == len(expected)
    for line, values in zip(training, expected, strict=True):
        assert re.fullmatch(pattern.format(*values), line), line
    assert sum(line.startswith("Validation: batch 1/1 (100%)") for line in progress_lines) == 2


def test_command_line_logs_progress_when_output_is_not_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, progress_lines: list[str]
) -> None:
    config = ["-c", str(REPO_ROOT / "configs" / "setups" / "synthetic_faces.yaml")]
    config += ["-c", str(REPO_ROOT / "configs" / "training" / "classifier.yaml")]
    tiny = [
        "--trainer.max_epochs=1",
        "--trainer.limit_val_batches=1",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.callbacks=[]",
        "--model.init_args.model_name=test_resnet",
        f"--dataset.init_args.root={tmp_path / 'faces'}",
        "--dataset.init_args.synthetic.init_args.num_images=100",
        "--dataset.init_args.batch_size=40",
        "--dataset.init_args.num_workers=0",
    ]
    cli = build_cli(["fit", *config, *tiny])
    assert isinstance(cli.trainer.progress_bar_callback, ProgressLog)
    assert any(re.match(r"Training epoch 1/1: batch 2/2 \(100%\)", line) for line in progress_lines)
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    cli = build_cli([*config, *tiny], run=False)
    assert isinstance(cli.trainer.progress_bar_callback, TQDMProgressBar | RichProgressBar)


def test_traceback_on_request(dg: Path, tiny_classifier: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTNING_FAIR_TRACEBACK", "1")
    with pytest.raises(ValueError, match="is an attribute-classifier folder"):
        main(["test", "-c", str(dg), f"--model.init_args.backbone={tiny_classifier}"])
