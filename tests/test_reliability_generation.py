"""Generated samples on disk under interruption: complete records, refused mismatches, resumed runs equal to whole ones.

Every interrupted run here is resumed with the same command and must end with the same images, table, metrics and
sample grid as an uninterrupted run: the records are byte for byte the same files.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch import Trainer
from PIL import Image

from lightning_fair.callbacks import GenerationWriter
from lightning_fair.data.generated import MANIFEST, TABLE
from lightning_fair.main import main

NUM_SAMPLES = 12  # three global batches of 4; the grid shows samples 0-3

# Runs lightning-fair with a fault injected (FAULT=kind:count); children of a DDP run execute it too.
FAULTY_RUN = """
import os, signal, sys
from pathlib import Path

from lightning_fair.callbacks.generation_writer import GenerationWriter
from lightning_fair.main import main

kind, count = os.environ["FAULT"].split(":")
if kind == "sigkill_before_commit":  # killed with a record written but not yet renamed into place
    rename, renamed = Path.replace, []
    def replace(self, target):
        if Path(target).suffix == ".png" and Path(target).parent.name == "images":
            renamed.append(target)
            if len(renamed) == int(count):
                os.kill(os.getpid(), signal.SIGKILL)
        return rename(self, target)
    Path.replace = replace
elif kind == "sigterm_after_batch":  # process 0 asked to terminate once a batch is done
    write = GenerationWriter.on_predict_batch_end
    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args):
        write(self, trainer, pl_module, outputs, batch, batch_idx, *args)
        if trainer.global_rank == 0 and batch_idx == int(count):
            os.kill(os.getpid(), signal.SIGTERM)
    GenerationWriter.on_predict_batch_end = on_predict_batch_end
main()
"""


def predict_args(config: Path, *extra: str) -> list[str]:
    """``predict`` resuming from the writer's folder, as a requeued or repeated job runs it."""
    return ["predict", "-c", str(config), f"--data.init_args.skip_existing={config.parent / 'generated'}", *extra]


def results(folder: Path) -> dict[str, Any]:
    """Everything a run leaves: the record files, the table, the newest metrics and sample grid."""
    versions = sorted((folder / "logs" / "run").glob("version_*"), key=lambda path: int(path.name.split("_")[1]))
    finished = [version for version in versions if (version / "metrics.json").is_file()]
    assert finished, f"no run in {folder} wrote metrics"
    return {
        "records": {path.name: path.read_bytes() for path in sorted((folder / "generated" / "images").iterdir())},
        "table": (folder / "generated" / TABLE).read_text(),
        "metrics": json.loads((finished[-1] / "metrics.json").read_text()),
        "grid": [path.read_bytes() for path in finished[-1].glob("samples_*.png")],
    }


@pytest.fixture(scope="module")
def uninterrupted(generation_config: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("uninterrupted")
    main(predict_args(generation_config(folder, num_samples=NUM_SAMPLES)))
    return results(folder)


def test_uninterrupted_run_writes_every_record(uninterrupted: dict[str, Any]) -> None:
    assert list(uninterrupted["records"]) == [f"{index:06d}.png" for index in range(NUM_SAMPLES)]
    rows = list(csv.DictReader(uninterrupted["table"].splitlines()))
    assert [int(row["index"]) for row in rows] == list(range(NUM_SAMPLES))
    assert uninterrupted["metrics"]["metrics"]["num_samples"] == NUM_SAMPLES
    assert len(uninterrupted["grid"]) == 1


@pytest.mark.parametrize("subcommand", ["test", "predict"])
def test_sigterm_stops_after_the_batch_and_rerun_resumes(
    generation_config: Callable[..., Path],
    tmp_path: Path,
    uninterrupted: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    subcommand: str,
) -> None:
    hook = f"on_{subcommand}_batch_end"
    write = getattr(GenerationWriter, hook)

    def terminate_after_batch_1(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
        write(self, trainer, pl_module, outputs, batch, batch_idx, *args)
        if batch_idx == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    config = generation_config(tmp_path, num_samples=NUM_SAMPLES)
    args = [subcommand, *predict_args(config)[1:]]
    with monkeypatch.context() as patch:
        patch.setattr(GenerationWriter, hook, terminate_after_batch_1)
        with pytest.raises(SystemExit) as stopped:
            main(args)
    assert stopped.value.code == 128 + signal.SIGTERM
    images = tmp_path / "generated" / "images"
    assert sorted(path.name for path in images.iterdir()) == [f"{index:06d}.png" for index in range(8)]
    assert not list(tmp_path.glob("logs/run/*/metrics.json"))  # no metrics of part of the samples
    assert not list(tmp_path.glob("logs/run/*/samples_*.png"))

    with caplog.at_level("INFO"):
        main(args)
    assert f"8 of {NUM_SAMPLES} samples are read back" in caplog.text
    assert results(tmp_path) == uninterrupted


def test_failure_between_images_and_table_is_resumed(
    generation_config: Callable[..., Path],
    tmp_path: Path,
    uninterrupted: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The first CSV write fails (with images on disk); the rerun still ends with every row and every sample."""

    def fail(*args: Any) -> None:
        raise OSError("disk full")

    config = generation_config(tmp_path, num_samples=NUM_SAMPLES)
    with monkeypatch.context() as patch:
        patch.setattr(csv.DictWriter, "writerows", fail)
        with pytest.raises(OSError, match="disk full"):
            main(predict_args(config))
    written = len(list((tmp_path / "generated" / "images").glob("*.png")))
    assert written
    with caplog.at_level("INFO"):
        main(predict_args(config))
    complete = written - written % 4  # whole global batches of 4 are read back
    assert f"{complete} of {NUM_SAMPLES} samples are read back" in caplog.text  # resumed, not generated again
    assert results(tmp_path) == uninterrupted


def test_failed_record_leaves_no_partial_file(
    generation_config: Callable[..., Path],
    tmp_path: Path,
    uninterrupted: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The 6th record fails after its image is encoded, before it is renamed into place."""
    save, saved = Image.Image.save, []

    def save_then_fail(self: Image.Image, path: Any, *args: Any, **kwargs: Any) -> None:
        save(self, path, *args, **kwargs)
        saved.append(path)
        if len(saved) == 6:
            raise OSError("interrupted")

    config = generation_config(tmp_path, num_samples=NUM_SAMPLES)
    with monkeypatch.context() as patch:
        patch.setattr(Image.Image, "save", save_then_fail)
        with pytest.raises(OSError, match="interrupted"):
            main(predict_args(config))
    images = tmp_path / "generated" / "images"
    assert sorted(path.name for path in images.iterdir()) == [f"{index:06d}.png" for index in range(5)]
    with caplog.at_level("INFO"):
        main(predict_args(config))
    assert f"4 of {NUM_SAMPLES} samples are read back" in caplog.text  # whole global batches of 4 only
    assert results(tmp_path) == uninterrupted


@pytest.mark.slow  # fast: test_failed_record_leaves_no_partial_file; a SIGKILLed fit stays in the default run
def test_killed_process_resumes_to_the_same_result(
    generation_config: Callable[..., Path], tmp_path: Path, uninterrupted: dict[str, Any]
) -> None:
    """SIGKILL while the 7th record is written (before its rename): a temporary file is left; the rerun clears it."""
    config = generation_config(tmp_path, num_samples=NUM_SAMPLES)
    script = tmp_path / "faulty_run.py"
    script.write_text(FAULTY_RUN)
    env = os.environ | {"FAULT": "sigkill_before_commit:7"}
    killed = subprocess.run([sys.executable, str(script), *predict_args(config)], env=env, capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-3000:]
    images = tmp_path / "generated" / "images"
    assert sorted(path.name for path in images.glob("*.png")) == [f"{index:06d}.png" for index in range(6)]
    assert len(list(images.glob(".*.tmp"))) == 1  # the record being written when the process died

    resumed = subprocess.run([sys.executable, "-m", "lightning_fair", *predict_args(config)], capture_output=True)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    assert f"4 of {NUM_SAMPLES} samples are read back" in resumed.stderr.decode()  # whole global batches only
    assert not list(images.glob(".*.tmp"))
    assert results(tmp_path) == uninterrupted


@pytest.mark.parametrize(
    ("option", "difference"),
    [
        ("--model.init_args.seed=1", "hyperparameters.seed: 0 there, 1 now"),
        ("--data.init_args.num_samples=16", "num_samples: 12 there, 16 now"),
    ],
)
@pytest.mark.parametrize("resume", [True, False])
def test_rerun_with_other_settings_is_refused(
    generation_config: Callable[..., Path],
    tmp_path: Path,
    uninterrupted: dict[str, Any],
    option: str,
    difference: str,
    resume: bool,
    cli_error: Callable[[list[str]], str],
) -> None:
    config = generation_config(tmp_path, num_samples=NUM_SAMPLES)
    main(predict_args(config))
    before = {path: path.stat().st_mtime_ns for path in (tmp_path / "generated").rglob("*")}
    args = predict_args(config, option) if resume else ["predict", "-c", str(config), option]
    message = cli_error(args).removeprefix("error: ")
    assert "generated with other settings" in message
    assert message.startswith(f"{tmp_path / 'generated' / MANIFEST}: ")
    assert difference in message
    assert message.endswith("write to a new folder or delete this one")
    assert {path: path.stat().st_mtime_ns for path in (tmp_path / "generated").rglob("*")} == before


def test_folder_without_manifest_is_refused(
    generation_config: Callable[..., Path], tmp_path: Path, cli_error: Callable[[list[str]], str]
) -> None:
    config = generation_config(tmp_path, num_samples=NUM_SAMPLES)
    images = tmp_path / "generated" / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(images / "000000.png")
    message = cli_error(predict_args(config)).removeprefix("error: ")
    assert message.startswith(f"{tmp_path / 'generated'}: holds generated images but no manifest.json")


def test_predict_returns_no_predictions_by_default(
    generation_config: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command line discards what predict returns: it must not keep every image until the end."""
    returned = []

    @functools.wraps(Trainer.predict)
    def record(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        returned.append(predict(self, *args, **kwargs))
        return returned[-1]

    predict = Trainer.predict
    monkeypatch.setattr(Trainer, "predict", record)
    main(["predict", "-c", str(generation_config(tmp_path, num_samples=4))])
    assert returned == [None]


@pytest.mark.slow  # fast: test_sigterm_stops_after_the_batch_and_rerun_resumes (one process)
def test_sigterm_stops_every_process_of_a_ddp_predict(generation_config: Callable[..., Path], tmp_path: Path) -> None:
    """SIGTERM to process 0 of a 2-process run (Lightning passes it on to process 1): both stop after the same batch."""
    config = generation_config(tmp_path, num_samples=NUM_SAMPLES)
    script = tmp_path / "faulty_run.py"
    script.write_text(FAULTY_RUN)
    ddp = ["--trainer.devices=2", "--trainer.strategy=ddp"]
    env = os.environ | {"FAULT": "sigterm_after_batch:1"}
    stopped = subprocess.run(
        [sys.executable, str(script), *predict_args(config, *ddp)], env=env, capture_output=True, timeout=300
    )
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr.decode()[-3000:]
    images = tmp_path / "generated" / "images"
    assert sorted(path.name for path in images.iterdir()) == [f"{index:06d}.png" for index in range(8)]
    finished = {path.name: path.read_bytes() for path in images.iterdir()}
    resumed = subprocess.run(
        [sys.executable, "-m", "lightning_fair", *predict_args(config, *ddp)], capture_output=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    assert f"8 of {NUM_SAMPLES} samples are read back" in resumed.stderr.decode()
    assert {name: (images / name).read_bytes() for name in finished} == finished
    rows = list(csv.DictReader((tmp_path / "generated" / TABLE).read_text().splitlines()))
    assert [int(row["index"]) for row in rows] == list(range(NUM_SAMPLES))
    assert results(tmp_path)["metrics"]["metrics"]["num_samples"] == NUM_SAMPLES


@pytest.mark.slow
def test_batch_guidance_resumed_on_two_processes_equals_uninterrupted(
    generation_config: Callable[..., Path], tiny_classifier: Path, tmp_path: Path
) -> None:
    """Distribution Guidance steers whole global batches: stopped and resumed on 2 processes, it gives the same."""
    ddp = [
        "--trainer.devices=2",
        "--trainer.strategy=ddp",
        f"--model.init_args.classifier={tiny_classifier}",
        "--model.init_args.target_distributions={Male: [0.2, 0.8]}",
        "--model.init_args.guidance_scale=300.0",
    ]
    outcomes = []
    for name, fault in (("uninterrupted", None), ("resumed", "sigterm_after_batch:0")):
        folder = tmp_path / name
        folder.mkdir()
        config = generation_config(folder, num_samples=NUM_SAMPLES, method="DistributionGuidance")
        if fault:
            script = folder / "faulty_run.py"
            script.write_text(FAULTY_RUN)
            command = [sys.executable, str(script), *predict_args(config, *ddp)]
            stopped = subprocess.run(command, env=os.environ | {"FAULT": fault}, capture_output=True, timeout=300)
            assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr.decode()[-3000:]
            assert len(list((folder / "generated" / "images").glob("*.png"))) == 4
        command = [sys.executable, "-m", "lightning_fair", *predict_args(config, *ddp)]
        finished = subprocess.run(command, capture_output=True, timeout=300)
        assert finished.returncode == 0, finished.stderr.decode()[-3000:]
        if fault:
            assert f"4 of {NUM_SAMPLES} samples are read back" in finished.stderr.decode()
        outcomes.append(results(folder))
    assert outcomes[0] == outcomes[1]


def test_damaged_record_is_named(
    generation_config: Callable[..., Path], tmp_path: Path, cli_error: Callable[[list[str]], str]
) -> None:
    """A record damaged outside the writer (e.g. by a crash of the machine) is reported by name, never used."""
    config = generation_config(tmp_path, num_samples=NUM_SAMPLES)
    main(predict_args(config))
    record = tmp_path / "generated" / "images" / "000001.png"
    record.write_bytes(record.read_bytes()[:200])
    message = cli_error(predict_args(config)).removeprefix("error: ")
    assert message.startswith(f"{record}: not a readable record (")
    assert message.endswith("; delete it to generate it again")
