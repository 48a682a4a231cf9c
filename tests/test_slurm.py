"""The SLURM template: its #SBATCH header, and the lightning-fair command line it launches parses.

The template runs under bash with sample SLURM variables and a stand-in ``srun`` that records its arguments; the
recorded lightning-fair arguments then go, with ``--print_config``, through the command line in-process.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from lightning_fair.callbacks import GenerationWriter
from lightning_fair.main import main

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = REPO_ROOT / "scripts" / "slurm" / "lightning_fair.sbatch"
SETUP = str(REPO_ROOT / "configs" / "setups" / "synthetic_faces.yaml")
CONFIGS = REPO_ROOT / "configs" / "methods"
TRAINING = REPO_ROOT / "configs" / "training"
SLURM = {"SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "4", "SLURM_JOB_ID": "123", "SLURM_CPUS_PER_TASK": "8"}
RUN_DIR = "logs/slurm/123"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="the template is a bash script")


def sbatch_options() -> dict[str, str]:
    """The template's ``#SBATCH --name[=value]`` lines, without their trailing comments."""
    options = {}
    for line in TEMPLATE.read_text().splitlines():
        if line.startswith("#SBATCH "):
            option = shlex.split(line.removeprefix("#SBATCH "), comments=True)[0]
            name, _, value = option.removeprefix("--").partition("=")
            options[name] = value
    return options


def launch(tmp_path: Path, *script_args: str, slurm: dict[str, str] = SLURM) -> list[str]:
    """Runs the template in ``tmp_path`` and returns the arguments it gave lightning-fair through srun."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    srun = bin_dir / "srun"
    srun.write_text('#!/usr/bin/env bash\nprintf "%s\\0" "$@" > "$SRUN_ARGS"\n')
    srun.chmod(0o755)
    recorded = tmp_path / "srun_args"
    env = {name: value for name, value in os.environ.items() if not name.startswith("SLURM_")}
    env |= slurm | {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "SRUN_ARGS": str(recorded),
        "LIGHTNING_FAIR_VENV": "",  # the test's own environment
    }
    result = subprocess.run(
        ["bash", str(TEMPLATE), *script_args], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    srun_args = recorded.read_text().split("\0")[:-1]
    assert "lightning-fair" in srun_args, shlex.join(srun_args)
    return srun_args[srun_args.index("lightning-fair") + 1 :]


def printed_config(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict:
    """The config that ``lightning-fair ARGS --print_config`` prints; fails on any option the CLI rejects."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--print_config"])
    output = capsys.readouterr()
    assert exit_info.value.code == 0, f"lightning-fair {shlex.join(args)}\n{output.err}"
    return yaml.safe_load(output.out)


def assert_multi_node(config: dict) -> None:
    trainer = config["trainer"]
    assert trainer["num_nodes"] == 2
    assert str(trainer["devices"]) == "4"  # the CLI keeps "4" a string; Lightning reads it as a GPU count
    assert trainer["accelerator"] == "gpu"
    assert trainer["strategy"] == "ddp"
    assert trainer["default_root_dir"] == RUN_DIR  # where Lightning saves and finds hpc_ckpt_N.ckpt on requeue
    assert trainer["logger"]["init_args"]["save_dir"] == RUN_DIR
    assert trainer["logger"]["init_args"]["name"] == ""  # version folders right in the job's folder


def test_header() -> None:
    text = TEMPLATE.read_text()
    assert subprocess.run(["bash", "-n", str(TEMPLATE)], check=False).returncode == 0
    assert "set -euo pipefail" in text
    options = sbatch_options()
    gpus = re.fullmatch(r"gpu(?::\w+)?:(\d+)", options["gres"])
    assert gpus, options["gres"]
    assert options["ntasks-per-node"] == gpus.group(1)  # one process per GPU
    assert int(options["nodes"]) >= 1
    assert int(options["cpus-per-task"]) >= 1
    assert options["signal"] == "SIGUSR1@90"  # Lightning's SLURMEnvironment requeues on SIGUSR1
    assert options["requeue"] == ""
    assert options["open-mode"] == "append"
    assert options["output"] == "logs/slurm/%x-%j.out"


def test_usage(tmp_path: Path) -> None:
    env = os.environ | SLURM | {"LIGHTNING_FAIR_VENV": ""}
    result = subprocess.run(["bash", str(TEMPLATE), "fit"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage:" in result.stderr


def test_test_command(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    args = launch(tmp_path, "test", SETUP, str(CONFIGS / "plain.yaml"))
    monkeypatch.chdir(tmp_path)
    config = printed_config(args, capsys)
    assert_multi_node(config)
    assert config["ckpt_path"] is None  # only fit resumes
    assert (tmp_path / RUN_DIR).is_dir()


def test_fit_command(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    args = launch(tmp_path, "fit", SETUP, str(TRAINING / "pretrain_unet.yaml"), "--trainer.max_epochs=3")
    monkeypatch.chdir(tmp_path)
    config = printed_config(args, capsys)
    assert_multi_node(config)
    assert config["ckpt_path"] == "last"  # the config's last.ckpt if there is one, else a fresh start
    assert config["trainer"]["max_epochs"] == 3  # the caller's arguments are passed on


def test_fit_caller_ckpt_path_wins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    args = launch(tmp_path, "fit", SETUP, str(TRAINING / "pretrain_unet.yaml"), "--ckpt_path=null")
    monkeypatch.chdir(tmp_path)
    assert printed_config(args, capsys)["ckpt_path"] is None


def test_fit_requeued_resumes_from_hpc_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What Lightning leaves in default_root_dir when SIGUSR1 arrives, before it requeues the job.
    (tmp_path / RUN_DIR).mkdir(parents=True)
    (tmp_path / RUN_DIR / "hpc_ckpt_1.ckpt").touch()
    args = launch(tmp_path, "fit", SETUP, str(TRAINING / "pretrain_unet.yaml"), "--ckpt_path=null")
    monkeypatch.chdir(tmp_path)
    config = printed_config(args, capsys)
    assert_multi_node(config)
    assert config["ckpt_path"] == "hpc"  # the newest state, over the caller's --ckpt_path


# One task on one node, as SLURM describes it to that task (Lightning's SLURMEnvironment reads these).
ONE_TASK = {
    "SLURM_NNODES": "1",
    "SLURM_NTASKS_PER_NODE": "1",
    "SLURM_NTASKS": "1",
    "SLURM_JOB_ID": "123",
    "SLURM_JOB_NAME": "lightning-fair",
    "SLURM_CPUS_PER_TASK": "1",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
    "SLURM_NODELIST": "127.0.0.1",
}


def test_predict_requeued_resumes_to_the_uninterrupted_result(
    tmp_path: Path,
    generation_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Near the time limit SLURM sends SIGUSR1 (``#SBATCH --signal``): Lightning requeues the job, and SLURM then
    ends it with SIGTERM. The run stops after the current batch; the requeued job, the same command, resumes and ends
    with the records, table and metrics of an uninterrupted run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text('#!/usr/bin/env bash\necho "$@" >> "$SCONTROL_CALLS"\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SCONTROL_CALLS", str(tmp_path / "scontrol_calls"))
    for name, value in ONE_TASK.items():
        monkeypatch.setenv(name, value)

    def run_job(folder: Path) -> list[str]:
        """The job's lightning-fair arguments (the template's, then the caller's: CPU, resume the writer's folder)."""
        config = generation_config(folder, num_samples=12)
        caller = [
            "--trainer.accelerator=cpu",
            "--trainer.strategy=auto",
            f"--data.init_args.skip_existing={folder / 'generated'}",
        ]
        bare_setup = folder / "bare_setup.yaml"  # the generation config is a whole run of its own
        bare_setup.write_text("seed_everything: 0\n")
        return launch(folder, "predict", str(bare_setup), str(config), *caller, slurm=ONE_TASK)

    def outputs(folder: Path) -> dict[str, object]:
        versions = sorted((folder / RUN_DIR / "run").glob("version_*/metrics.json"))
        return {
            "records": {path.name: path.read_bytes() for path in sorted((folder / "generated" / "images").iterdir())},
            "table": (folder / "generated" / "generations.csv").read_text(),
            "metrics": json.loads(versions[-1].read_text()),
        }

    uninterrupted = tmp_path / "uninterrupted"
    uninterrupted.mkdir()
    args = run_job(uninterrupted)
    monkeypatch.chdir(uninterrupted)
    main(args)
    expected = outputs(uninterrupted)

    requeued = tmp_path / "requeued"
    requeued.mkdir()
    args = run_job(requeued)
    monkeypatch.chdir(requeued)
    write = GenerationWriter.on_predict_batch_end

    def time_limit_after_batch_1(self, trainer, pl_module, outputs, batch, batch_idx, *rest) -> None:
        write(self, trainer, pl_module, outputs, batch, batch_idx, *rest)
        if batch_idx == 1:
            os.kill(os.getpid(), signal.SIGUSR1)  # --signal=SIGUSR1@90
            os.kill(os.getpid(), signal.SIGTERM)  # scontrol requeue ends the running job

    with monkeypatch.context() as patch:
        patch.setattr(GenerationWriter, "on_predict_batch_end", time_limit_after_batch_1)
        with pytest.raises(SystemExit) as stopped:
            main(args)
    assert stopped.value.code != 0
    assert (tmp_path / "scontrol_calls").read_text() == "requeue 123\n"
    assert len(list((requeued / "generated" / "images").glob("*.png"))) == 8
    assert not (requeued / "generated" / "generations.csv").exists()

    with caplog.at_level("INFO"):
        main(args)  # the requeued job: same job id, same command
    assert "8 of 12 samples are read back" in caplog.text  # resumed, not generated again
    assert outputs(requeued) == expected
