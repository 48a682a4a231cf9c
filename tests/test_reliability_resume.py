"""Every ``fit`` leaves a resumable checkpoint, and a fit killed or requeued mid-way ends as an uninterrupted one.

Interruptions are real: a fit process that SIGKILLs itself after a checkpoint is written, and SLURM's requeue
(SIGUSR1: Lightning saves ``hpc_ckpt_N.ckpt`` and calls ``scontrol requeue``; then the SIGTERM SLURM sends) in the
test process. Resumed runs use the commands a user (or ``scripts/slurm/lightning_fair.sbatch``) would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from config_files import RUN_CONFIGS
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_fair.classifiers
import lightning_fair.methods
import lightning_fair.pretraining
from lightning_fair.data import CelebADataModule
from lightning_fair.main import main
from lightning_fair.methods import DebiasingMethod
from lightning_fair.pretraining import DiffusionPretraining

REPO_ROOT = Path(__file__).resolve().parents[1]
METHODS = ["pretraining", "distribution_guidance", "attribute_switching", "classifier"]


# ------------------------------------------------------------------------------------ every config's checkpoints


def model_class(config: dict) -> type:
    name = config["model"]["class_path"].rsplit(".", 1)[-1]
    for module in (lightning_fair.methods, lightning_fair.pretraining, lightning_fair.classifiers):
        if hasattr(module, name):
            return getattr(module, name)
    raise LookupError(f"Unknown model class {name}")


def fit_configs() -> list[Path]:
    """The method and training configs whose model trains something (the others have no ``fit``)."""
    configs = []
    for path in RUN_CONFIGS:
        cls = model_class(yaml.safe_load(path.read_text()))
        if is_overridden("training_step", parent=LightningModule, instance=cls):
            configs.append(path)
    return configs


def checkpoint_callbacks(config: Path, folder: Path) -> list[ModelCheckpoint]:
    """The checkpoint callbacks a fit of ``config`` runs with, writing into ``folder``.

    A debiasing method supplies its own (``configure_callbacks``, called here on a stand-in for a module that needs
    a fit); a training config lists them.
    """
    options = yaml.safe_load(config.read_text())
    cls = model_class(options)
    if issubclass(cls, DebiasingMethod):
        trainer = SimpleNamespace(checkpoint_callbacks=[None], default_root_dir=folder)
        stand_in = SimpleNamespace(needs_fit=True, trainer=trainer, checkpoint_folder=lambda root: folder)
        return DebiasingMethod.configure_callbacks(stand_in)
    entries = options["trainer"]["callbacks"]
    return [
        ModelCheckpoint(**{**entry["init_args"], "dirpath": str(folder)})
        for entry in entries
        if entry["class_path"].endswith("ModelCheckpoint")
    ]


class Stub(LightningModule):
    """One weight; logs a validation accuracy that never improves after the first epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        return (self.weight - batch[0]).pow(2).mean()

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val/acc_mean", 1.0 if self.current_epoch == 0 else 0.5)
        self.log("val/loss", 1.0)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class NewestCheckpointAge(Callback):
    """Records, before every batch, how many optimizer steps the newest ``last*.ckpt`` is behind."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.ages: list[int | None] = []
        self.steps: dict[tuple[Path, int], int] = {}  # global step of each checkpoint file version read

    def on_train_batch_start(self, trainer: Trainer, *args: object) -> None:
        versions = [(path, path.stat().st_mtime_ns) for path in self.folder.glob("last*.ckpt")]
        if not versions:
            self.ages.append(None)
            return
        for version in versions:
            if version not in self.steps:
                checkpoint = torch.load(version[0], weights_only=False)
                assert {"loops", "optimizer_states", "state_dict"} <= set(checkpoint)  # a full, resumable checkpoint
                self.steps[version] = checkpoint["global_step"]
        newest = max(self.steps[version] for version in versions)
        self.ages.append(trainer.global_step - newest)


@pytest.mark.parametrize("config", fit_configs(), ids=lambda path: str(path.relative_to(REPO_ROOT / "configs")))
def test_fit_config_keeps_a_resumable_last_checkpoint(config: Path, tmp_path: Path) -> None:
    """The config's checkpoint callbacks, on a stub fit, keep a last*.ckpt at most an epoch (or N steps) old."""
    callbacks = checkpoint_callbacks(config, tmp_path)
    assert callbacks, f"{config} trains but has no ModelCheckpoint"
    step_interval = max(callback._every_n_train_steps for callback in callbacks)
    batches_per_epoch = step_interval or 4
    probe = NewestCheckpointAge(tmp_path)
    interval = step_interval or batches_per_epoch
    trainer = Trainer(
        max_steps=2 * interval + 1,
        callbacks=[*callbacks, probe],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    data = DataLoader(TensorDataset(torch.arange(batches_per_epoch, dtype=torch.float32)), batch_size=1)
    trainer.fit(Stub(), data, data)
    for step, age in enumerate(probe.ages):
        if step >= interval:
            assert age is not None, f"step {step}: no last*.ckpt yet"
            assert age < interval, f"step {step}: the newest last*.ckpt is {age} steps old"


# ----------------------------------------------------------------------------------------- the train order


def train_batches(faces_root: Path, epoch: int, skip_batches: int = 0, **options: object) -> list[dict]:
    data = CelebADataModule(
        str(faces_root), attributes=["Male"], sensitive="Male", image_size=32, batch_size=16, **options
    )
    data.setup("fit")
    loader = data.train_dataloader()
    loader.sampler.start = lambda: (epoch, skip_batches * 16)  # what a fit's loop progress says
    return list(loader)


def test_train_order_and_flips_depend_only_on_seed_and_epoch(faces_root: Path) -> None:
    """The same batches with or without worker processes, after any use of the global random state; a restored
    fit's first epoch starts after the batches it has trained on."""
    torch.manual_seed(0)
    epoch_one = train_batches(faces_root, epoch=1)
    torch.manual_seed(123)
    with_workers = train_batches(faces_root, epoch=1, num_workers=2)
    for ours, theirs in zip(epoch_one, with_workers, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.testing.assert_close(train_batches(faces_root, epoch=1, skip_batches=3), epoch_one[3:], rtol=0, atol=0)
    epoch_two = train_batches(faces_root, epoch=2)
    assert not torch.equal(epoch_one[0]["index"], epoch_two[0]["index"])  # a new order every epoch
    indices = torch.cat([batch["index"] for batch in epoch_one])
    assert sorted(indices.tolist()) == sorted(torch.cat([batch["index"] for batch in epoch_two]).tolist())
    assert len(set(indices.tolist())) == len(indices)  # every image once
    other_seed = train_batches(faces_root, epoch=1, seed=1)
    assert not torch.equal(epoch_one[0]["index"], other_seed[0]["index"])


def test_flips_are_drawn_per_image_and_epoch(faces_root: Path) -> None:
    """About half the images are flipped, not the same ones in two epochs, and none without ``horizontal_flip``."""
    flipped = {}
    for epoch in (0, 1):
        augmented = torch.cat([batch["image"] for batch in train_batches(faces_root, epoch)])
        order = torch.cat([batch["index"] for batch in train_batches(faces_root, epoch)])
        plain = torch.cat([batch["image"] for batch in train_batches(faces_root, epoch, horizontal_flip=False)])
        mirrored = (augmented - plain).flatten(1).abs().amax(dim=1) > 0
        flipped[epoch] = set(order[mirrored].tolist())
        assert 0.35 < mirrored.float().mean() < 0.65
    assert flipped[0] != flipped[1]


# ------------------------------------------------------------------------------------------- tiny fit configs


class Interrupt(Callback):
    """Sends ``signals`` to this process after batch ``batch`` of epoch ``epoch`` of a fit not started from a
    checkpoint (so that the resumed run, the same command, goes through)."""

    def __init__(self, epoch: int, batch: int, signals: list[str]) -> None:
        self.epoch = epoch
        self.batch = batch
        self.signals = signals

    def on_train_batch_end(self, trainer: Trainer, module: object, outputs: object, batch: object, index: int) -> None:
        if trainer.ckpt_path is None and (trainer.current_epoch, index) == (self.epoch, self.batch):
            for name in self.signals:
                os.kill(os.getpid(), getattr(signal, name))


class BatchCounter(Callback):
    """Writes into ``file`` how many training batches this process has run (a resume must not start over)."""

    def __init__(self, file: str) -> None:
        self.file = Path(file)
        self.count = 0

    def on_train_batch_end(self, *args: object) -> None:
        self.count += 1
        self.file.write_text(str(self.count))


def counter_argument(file: Path) -> str:
    callback = {"class_path": f"{__name__}.BatchCounter", "init_args": {"file": str(file)}}
    return f"--trainer.callbacks+={json.dumps(callback)}"


def batches_left(checkpoint: Path, method: str) -> int:
    """Training batches a fit resumed from ``checkpoint`` must run: the 9 of the tiny fits less those it saved.

    Attribute switching's calibration epoch (3 batches) is run again in full from a checkpoint taken inside it.
    """
    if method == "attribute_switching":
        return 3
    return 9 - torch.load(checkpoint, weights_only=False)["global_step"]


def interrupt_argument(epoch: int, batch: int, signals: list[str]) -> str:
    callback = {
        "class_path": f"{__name__}.Interrupt",
        "init_args": {"epoch": epoch, "batch": batch, "signals": signals},
    }
    return f"--trainer.callbacks+={json.dumps(callback)}"


@pytest.fixture(scope="module")
def fit_config(
    tiny_backbone: Path, tiny_classifier: Path, faces_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """The config of a tiny fit of each method: 3 epochs of 3 batches (attribute switching: one epoch of 3)."""
    folder = tmp_path_factory.mktemp("configs")
    faces = {"root": str(faces_root), "attributes": ["Male"], "sensitive": "Male", "image_size": 32, "batch_size": 8}
    models = {
        "pretraining": {
            "class_path": "DiffusionPretraining",
            "init_args": {
                "output_dir": "model",
                "block_out_channels": [8, 16],
                "norm_num_groups": 4,
                "attributes": ["Male"],
                "condition_attribute": "Male",
                "warmup_steps": 2,
            },
        },
        "distribution_guidance": {
            "class_path": "DistributionGuidance",
            "init_args": {
                "backbone": str(tiny_backbone),
                "classifier": str(tiny_classifier),
                "target_distributions": {"Male": [0.5, 0.5]},
                "sampler": {"num_inference_steps": 3},
            },
        },
        "attribute_switching": {
            "class_path": "AttributeSwitching",
            "init_args": {"backbone": str(tiny_backbone), "search_steps": 4},
        },
        "invdiff": {
            "class_path": "InvDiff",
            "init_args": {
                "backbone": str(tiny_backbone),
                "groups_file": "groups.safetensors",  # in the run's folder: a resumed fit reads it back
                "num_groups": 2,
                "grouper_steps": 10,
                "learning_rate": 1e-3,
                "warmup_steps": 2,
                "sampler": {"num_inference_steps": 3},
            },
        },
        "self_guidance": {
            "class_path": "SelfGuidance",
            "init_args": {
                "backbone": str(tiny_backbone),
                "clusters_file": "clusters.safetensors",  # in the run's folder: a resumed fit reads it back
                "num_clusters": 3,
                "learning_rate": 1e-3,
                "warmup_steps": 2,
                "sampler": {"num_inference_steps": 3},
            },
        },
        "classifier": {
            "class_path": "AttributeClassifier",
            "init_args": {"attributes": ["Male"], "model_name": "test_resnet", "image_size": 32},
        },
    }
    data = {
        "pretraining": {"class_path": "CelebADataModule", "init_args": faces},
        "distribution_guidance": {
            "class_path": "GenerationRequests",
            "init_args": {"train_data": {"class_path": "CelebADataModule", "init_args": faces}},
        },
        "attribute_switching": {
            "class_path": "GenerationRequests",
            "init_args": {"batch_size": 2, "calibration_samples": 6},
        },
        "invdiff": {
            "class_path": "GenerationRequests",
            "init_args": {"train_data": {"class_path": "CelebADataModule", "init_args": faces}},
        },
        "self_guidance": {
            "class_path": "GenerationRequests",
            "init_args": {"train_data": {"class_path": "CelebADataModule", "init_args": faces}},
        },
        "classifier": {"class_path": "CelebADataModule", "init_args": faces},
    }

    def write(method: str) -> Path:
        checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"filename": "last"}}
        if method == "attribute_switching":
            checkpoint["init_args"]["save_last"] = True
        config = {
            "seed_everything": 0,
            "trainer": {
                "accelerator": "cpu",
                "devices": 1,
                "max_epochs": 1 if method == "attribute_switching" else 3,
                "limit_train_batches": 3,
                "limit_val_batches": 1,
                "logger": False,
                "enable_progress_bar": False,
                "enable_model_summary": False,
                "callbacks": [checkpoint],
            },
            "model": models[method],
            "data": data[method],
        }
        path = folder / f"{method}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    return write


def final_state(run: Path) -> dict[str, object]:
    """What a fit in ``run`` ended with (its last checkpoint), and for attribute switching its D(tau) curve."""
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    state = {key: checkpoint[key] for key in ("state_dict", "optimizer_states", "lr_schedulers", "global_step")}
    if (run / "tau_curve.csv").is_file():
        state["tau_curve"] = (run / "tau_curve.csv").read_text()
    return state


def assert_same_state(resumed: dict[str, object], expected: dict[str, object]) -> None:
    """Equal tensors (weights, optimizer moments) and equal everything else."""
    assert resumed.keys() == expected.keys()
    torch.testing.assert_close(resumed["state_dict"], expected["state_dict"], rtol=0, atol=0)
    assert len(resumed["optimizer_states"]) == len(expected["optimizer_states"])
    for ours, theirs in zip(resumed["optimizer_states"], expected["optimizer_states"], strict=True):
        torch.testing.assert_close(ours.get("state", {}), theirs.get("state", {}), rtol=0, atol=0)
        assert ours.get("param_groups") == theirs.get("param_groups")
    for key in resumed.keys() - {"state_dict", "optimizer_states"}:
        assert resumed[key] == expected[key], key


def fit(config: Path, run: Path, *arguments: str) -> None:
    """``lightning-fair fit -c CONFIG`` in this process, into folder ``run``."""
    run.mkdir(exist_ok=True)
    cwd = Path.cwd()
    os.chdir(run)
    try:
        main(["fit", "-c", str(config), f"--trainer.default_root_dir={run}", *arguments])
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def uninterrupted(fit_config: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict]:
    """The final state of an uninterrupted fit of each method (computed once)."""
    states: dict[str, dict] = {}

    def get(method: str) -> dict:
        if method not in states:
            run = tmp_path_factory.mktemp(f"uninterrupted_{method}")
            fit(fit_config(method), run)
            states[method] = final_state(run)
        return states[method]

    return get


# ---------------------------------------------------------------------------------------------- SIGKILL


@pytest.mark.parametrize(
    "method",
    [
        pytest.param("pretraining", marks=pytest.mark.slow),  # also killed and resumed in-process below
        # The slurm requeue test below resumes each of these in-process; one SIGKILLed fit stays in the default run.
        pytest.param("distribution_guidance", marks=pytest.mark.slow),
        pytest.param("invdiff", marks=pytest.mark.slow),
        pytest.param("self_guidance", marks=pytest.mark.slow),
        "attribute_switching",  # killed inside its calibration epoch: the shortest fit a kill can interrupt
        pytest.param("classifier", marks=pytest.mark.slow),
    ],
)
def test_fit_killed_then_resumed_ends_as_an_uninterrupted_fit(
    method: str, fit_config: Callable[[str], Path], uninterrupted: Callable[[str], dict], tmp_path: Path
) -> None:
    """A fit process SIGKILLed in its last epoch (switching: inside its calibration epoch), resumed with
    ``--ckpt_path last``, ends with the weights (or tau) of an uninterrupted fit."""
    config = fit_config(method)
    epoch = 0 if method == "attribute_switching" else 2
    environment = os.environ | {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(Path(__file__).parent)])}
    command = [
        sys.executable,
        "-m",
        "lightning_fair",
        "fit",
        "-c",
        str(config),
        f"--trainer.default_root_dir={tmp_path}",
    ]
    killed = subprocess.run(
        [*command, interrupt_argument(epoch, 1, ["SIGKILL"])], cwd=tmp_path, env=environment, capture_output=True
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    checkpoints = sorted(path.name for path in (tmp_path / "checkpoints").glob("*")) if epoch else []
    assert checkpoints == (["last.ckpt"] if epoch else [])
    if epoch:
        assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == epoch - 1
        expected_batches = batches_left(tmp_path / "checkpoints" / "last.ckpt", method)
    else:
        expected_batches = 3
    fit(config, tmp_path, "--ckpt_path=last", counter_argument(tmp_path / "batches"))
    assert int((tmp_path / "batches").read_text()) == expected_batches  # resumed, not started over
    assert_same_state(final_state(tmp_path), uninterrupted(method))


# ------------------------------------------------------------------------------------------------ SLURM


@pytest.fixture
def slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A SLURM job's environment, with a stand-in ``scontrol`` that records its arguments; returns their file."""
    calls = tmp_path / "scontrol_calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    variables = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "lightning-fair",
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return calls


@pytest.mark.parametrize("method", [*METHODS, "invdiff", "self_guidance"])  # in-process: the fast resume proofs
def test_slurm_requeue_resumes_to_the_uninterrupted_result(
    method: str,
    fit_config: Callable[[str], Path],
    uninterrupted: Callable[[str], dict],
    slurm: Path,
    tmp_path: Path,
) -> None:
    """SIGUSR1 mid-epoch (switching: mid-calibration), then SIGTERM: Lightning writes hpc_ckpt_1.ckpt and requeues the
    job; the requeued command (``--ckpt_path hpc``, as the sbatch template adds) ends as an uninterrupted fit."""
    config = fit_config(method)
    run = tmp_path / "run"
    epoch = 0 if method == "attribute_switching" else 1
    with pytest.raises(SystemExit) as stopped:  # Lightning stops after the batch on SIGTERM
        fit(config, run, "--ckpt_path=last", interrupt_argument(epoch, 1, ["SIGUSR1", "SIGTERM"]))
    assert stopped.value.code == 143  # never taken for a finished run
    assert slurm.read_text() == "requeue 4242\n"
    assert (run / "hpc_ckpt_1.ckpt").is_file()
    expected_batches = batches_left(run / "hpc_ckpt_1.ckpt", method)
    requeued = ["--ckpt_path=hpc", counter_argument(tmp_path / "batches")]
    fit(config, run, "--ckpt_path=last", interrupt_argument(epoch, 1, ["SIGUSR1", "SIGTERM"]), *requeued)
    assert int((tmp_path / "batches").read_text()) == expected_batches  # resumed, not started over
    assert slurm.read_text() == "requeue 4242\n"  # not requeued again
    assert_same_state(final_state(run), uninterrupted(method))


# ------------------------------------------------------------------------- pretraining: every kind of checkpoint


class Crash(Callback):
    """Stops a fit with an error after optimizer step ``step`` (what is on disk then is all that survives)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("crash")


def pretraining_fit(
    root: Path,
    faces_root: Path,
    checkpoint: ModelCheckpoint,
    crash_at: int | None = None,
    resume: bool = False,
    counter: Callback | None = None,
) -> DiffusionPretraining:
    torch.manual_seed(0)  # the initial weights
    module = DiffusionPretraining(
        output_dir=str(root / "model"),
        block_out_channels=(8, 16),
        norm_num_groups=4,
        attributes=["Male"],
        condition_attribute="Male",
        warmup_steps=2,
    )
    data = CelebADataModule(str(faces_root), attributes=["Male"], sensitive="Male", image_size=32, batch_size=8)
    trainer = Trainer(
        max_epochs=3,
        limit_train_batches=4,
        limit_val_batches=1,
        callbacks=[checkpoint] + ([Crash(crash_at)] if crash_at else []) + ([counter] if counter else []),
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(module, data, ckpt_path=root / "checkpoints" / "last.ckpt" if resume else None)
    return module


@pytest.mark.parametrize(
    ("checkpoint_options", "crash_at", "saved_at"),
    [  # the end of an epoch, Lightning's own resume point, runs with the slow tests
        pytest.param({}, 10, 8, marks=pytest.mark.slow),  # end of epoch 1, crash inside epoch 2
        ({"every_n_train_steps": 3}, 8, 6),  # mid-epoch (batch 2 of epoch 1)
        ({"every_n_train_steps": 4}, 7, 4),  # after the last batch of epoch 0, before its epoch end
    ],
    ids=["epoch_end", "mid_epoch", "last_batch"],
)
def test_pretraining_resumes_exactly_from_any_checkpoint(
    checkpoint_options: dict, crash_at: int, saved_at: int, faces_root: Path, tmp_path: Path
) -> None:
    """Weights, EMA (and its step count), optimizer and the order of the data continue as if never interrupted."""

    def checkpoint() -> ModelCheckpoint:
        return ModelCheckpoint(filename="last", enable_version_counter=False, **checkpoint_options)

    expected = pretraining_fit(tmp_path / "uninterrupted", faces_root, checkpoint())
    with pytest.raises(RuntimeError, match="crash"):
        pretraining_fit(tmp_path / "run", faces_root, checkpoint(), crash_at=crash_at)
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == saved_at
    counter = BatchCounter(str(tmp_path / "batches"))
    resumed = pretraining_fit(tmp_path / "run", faces_root, checkpoint(), resume=True, counter=counter)
    assert counter.count == 12 - saved_at  # resumed, not started over
    assert resumed.trainer.global_step == expected.trainer.global_step == 12
    assert int(resumed.ema.n_averaged) == 12
    torch.testing.assert_close(resumed.state_dict(), expected.state_dict(), rtol=0, atol=0)
    [ours], [theirs] = resumed.trainer.optimizers, expected.trainer.optimizers
    torch.testing.assert_close(ours.state_dict()["state"], theirs.state_dict()["state"], rtol=0, atol=0)
