"""Shared fixtures: tiny synthetic datasets written once per test session."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from lightning_fair.classifiers import AttributeClassifier
from lightning_fair.data import CelebADataModule, GenerationRequests, SyntheticFaces, SyntheticWaterbirds
from lightning_fair.main import main
from lightning_fair.pretraining import DiffusionPretraining

REPO_ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):  # one torch thread per test worker: the workers share the cores
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # and in the processes a test starts, whose results it compares with its own


@pytest.fixture(scope="session")
def faces_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 300-image SyntheticFaces dataset in the CelebA format."""
    root = tmp_path_factory.mktemp("data") / "faces"
    SyntheticFaces(num_images=300, seed=3).write(root)
    return root


@pytest.fixture
def faces_requests(faces_root: Path) -> GenerationRequests:
    """Four generation requests whose ``fit`` reads the tiny faces (``Male`` only, batches of 8)."""
    return GenerationRequests(
        num_samples=4,
        batch_size=4,
        train_data=CelebADataModule(
            root=str(faces_root), attributes=["Male"], sensitive="Male", image_size=32, batch_size=8
        ),
    )


@pytest.fixture(scope="session")
def waterbirds_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 200-image SyntheticWaterbirds dataset in the Waterbirds format."""
    root = tmp_path_factory.mktemp("data") / "waterbirds"
    SyntheticWaterbirds(num_images=200, seed=3).write(root)
    return root


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised, tiny UNet conditional on Male (with a null label), in diffusers format."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "unet"
    module = DiffusionPretraining(
        output_dir=str(folder),
        block_out_channels=(8, 16),
        norm_num_groups=4,
        attributes=["Male"],
        condition_attribute="Male",
    )
    return module.export(folder)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised, tiny Stable Diffusion pipeline folder (32x32 images, 4x8x8 latents)."""
    from latent_model import write_tiny_pipeline

    return write_tiny_pipeline(tmp_path_factory.mktemp("models") / "sd")


@pytest.fixture(scope="session")
def tiny_sdxl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised, tiny SDXL pipeline folder (two text encoders, 32x32 images, 4x8x8 latents)."""
    from latent_model import write_tiny_xl_pipeline

    return write_tiny_xl_pipeline(tmp_path_factory.mktemp("models") / "sdxl")


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised, tiny attribute classifier of Male and Blond_Hair, as a pretrained folder."""
    torch.manual_seed(0)
    classifier = AttributeClassifier(["Male", "Blond_Hair"], model_name="test_resnet", image_size=32)
    return classifier.save_pretrained(tmp_path_factory.mktemp("models") / "classifier")


@pytest.fixture(scope="session")
def generation_config(tiny_backbone: Path, tiny_classifier: Path, faces_root: Path) -> Callable[..., Path]:
    """Writes a ``test`` config of the tiny models (evaluator, grid, writer) into a folder; returns its path."""

    def write(folder: Path, num_samples: int, method: str = "ConditionalSampling", name: str = "run") -> Path:
        config = f"""
    seed_everything: 0
    trainer:
      accelerator: cpu
      logger:
        class_path: lightning.pytorch.loggers.CSVLogger
        init_args: {{save_dir: {folder / "logs"}, name: {name}}}
      enable_progress_bar: false
      enable_model_summary: false
      callbacks:
        - class_path: FairnessEvaluator
          init_args:
            classifier: {tiny_classifier}
            sensitive: Male
            target: Blond_Hair
            kid_subset_size: 4
            cache_dir: {folder / "cache"}
            reference:
              class_path: CelebADataModule
              init_args: {{root: {faces_root}, attributes: [Male, Blond_Hair], sensitive: Male, image_size: 32}}
        - class_path: SampleGrid
          init_args: {{num_images: 4, nrow: 2}}
        - class_path: GenerationWriter
          init_args: {{output_dir: {folder / "generated"}, classifier: {tiny_classifier}}}
    model:
      class_path: {method}
      init_args:
        backbone: {tiny_backbone}
        sampler: {{num_inference_steps: 3, eta: 1.0}}
    data:
      class_path: GenerationRequests
      init_args: {{num_samples: {num_samples}, batch_size: 4}}
    """
        path = folder / f"{name}.yaml"
        path.write_text(textwrap.dedent(config))
        return path

    return write


@pytest.fixture
def tiny_setup(tiny_backbone: Path, tiny_classifier: Path, faces_root: Path, tmp_path: Path) -> Callable[..., Path]:
    """Writes a setup of the tiny models and faces (the configs of configs/methods follow it); returns its path.

    Its arguments: ``backbone`` (default the tiny pixel UNet), ``target_distribution`` of the evaluator, ``prompts``
    (of a text-to-image backbone).
    """

    def write(
        backbone: Path = tiny_backbone,
        target_distribution: list[float] | None = None,
        prompts: dict[str, Any] | None = None,
    ) -> Path:
        dataset = {
            "class_path": "CelebADataModule",
            "init_args": {
                "root": str(faces_root),
                "attributes": ["Male", "Blond_Hair"],
                "sensitive": "Male",
                "target": "Blond_Hair",
                "image_size": 32,
                "batch_size": 8,
                "num_workers": 0,
            },
        }
        evaluator = {
            "classifier": "${classifier}",
            "sensitive": "Male",
            "target": "Blond_Hair",
            "target_distribution": target_distribution,
            "kid_subset_size": 4,
            "cache_dir": str(tmp_path / "cache"),
            "reference": "${dataset}",
        }
        requests = {"num_samples": 4, "batch_size": 4, "calibration_samples": 4, "train_data": "${dataset}"}
        setup = {
            "seed_everything": 0,
            "backbone": str(backbone),
            "classifier": str(tiny_classifier),
            "prompts": prompts,
            "dataset": dataset,
            "evaluator": {"class_path": "FairnessEvaluator", "init_args": evaluator},
            "trainer": {
                "default_root_dir": str(tmp_path / "runs" / "${name}"),
                "accelerator": "cpu",
                "enable_model_summary": False,
                "callbacks": [{"class_path": "SampleGrid", "init_args": {"num_images": 4, "nrow": 2}}],
            },
            "data": {"class_path": "GenerationRequests", "init_args": requests},
            "method_settings": {  # the tiny models' settings: a short tau search, a delta UNet of their 2 levels
                "attribute_switching": {"model": {"init_args": {"search_steps": 4}}},
                "invdiff": {"model": {"init_args": {"delta_channels": [8, 16]}}},
                "fair_diffusion": {"model": {"init_args": {"edit_warmup_steps": 1}}},
                "uce": {"model": {"init_args": {"iterations": 2, "images_per_concept": 4}}},
            },
        }
        path = tmp_path / "tiny_setup.yaml"
        path.write_text(yaml.safe_dump(setup))
        return path

    return write


@pytest.fixture
def cli_error(capsys: pytest.CaptureFixture[str]) -> Callable[[list[str]], str]:
    """Runs the command line, checks it ends with exit status 2 and one error line, no traceback; returns the line."""

    def run(args: list[str]) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        stderr = capsys.readouterr().err
        assert "Traceback" not in stderr
        assert "weights_only=False" not in stderr
        lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, stderr
        return lines[0]

    return run


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str, dict[str, Any]], Path]:
    """A function writing a config ``mapping`` to ``tmp_path/<name>.yaml`` (``yaml.safe_dump``); it returns the path.

    Paths in the mapping are written as strings; keys keep their order.
    """

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(item) for item in value]
        return value

    def write(name: str, mapping: dict[str, Any]) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(plain(mapping), sort_keys=False))
        return path

    return write
