"""Prompt sets: files, class templates, per-prompt sample indices, batches, metrics and records."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from latent_model import text_method

from lightning_fair.data.prompt_sets import PROMPT_STRIDE, PromptSet, batch_prompt, prompt_of, sample_indices
from lightning_fair.data.requests import RequestBatches
from lightning_fair.main import main
from lightning_fair.methods import ConditionalSampling
from lightning_fair.methods.conditions import Prompts
from lightning_fair.metrics.prompts import across_prompts

OCCUPATIONS = "prompt,occupation,category\na photo of a nurse,nurse,care\na photo of a pilot,pilot,transport\n"


def test_a_text_file_holds_one_prompt_per_line(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("# occupations\na photo of a nurse\n\n  a photo of a pilot  \n")
    prompt_set = PromptSet.read(path)
    assert prompt_set.prompts == ("a photo of a nurse", "a photo of a pilot")
    assert prompt_set.metadata == ({}, {})


def test_a_csv_file_gives_each_prompt_its_metadata(tmp_path: Path) -> None:
    path = tmp_path / "prompts.csv"
    path.write_text(OCCUPATIONS)
    prompt_set = PromptSet.read(path)
    assert prompt_set.metadata[1] == {"occupation": "pilot", "category": "transport"}
    assert prompt_set.fill("a photo of a female {occupation}", 1, "prompts.classes") == "a photo of a female pilot"
    assert prompt_set.fill("{prompt}, a man", 0, "prompts.classes") == "a photo of a nurse, a man"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("empty.txt", "\n# nothing\n", r"'.*empty.txt' holds no prompt"),
        ("columns.csv", "text,occupation\nx,y\n", r"'.*columns.csv' has no 'prompt' column \(columns: \['text'"),
    ],
)
def test_bad_prompt_files_are_refused_naming_the_file(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        PromptSet.read(path)


def test_class_prompts_are_templates_over_a_prompt_set(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'prompts.classes': 'a photo of a woman' has no slot for the neutral prompt"):
        Prompts(neutral=["a", "b"], classes=["a photo of a woman", "a photo of a man"]).prompt_set(None)
    path = tmp_path / "prompts.csv"
    path.write_text(OCCUPATIONS)
    with pytest.raises(ValueError, match=r"template 'a \{job\}' names \['job'\], which '.*prompts.csv' lacks"):
        Prompts(file=str(path), classes=["a {job}", "b {job}"]).prompt_set(None)
    with pytest.raises(ValueError, match=r"'prompts.neutral' and 'prompts.file' both give neutral prompts"):
        Prompts(neutral="a", file=str(path))


def test_global_batches_hold_one_prompt_and_index_samples_by_prompt() -> None:
    requests = RequestBatches(num_samples=5, global_batch_size=2, world_size=1, num_prompts=3)
    batches = [requests[item]["index"] for item in range(len(requests))]
    assert len(batches) == 9
    assert [batch_prompt(batch) for batch in batches] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert batches[4].tolist() == [PROMPT_STRIDE + 2, PROMPT_STRIDE + 3]
    assert prompt_of(sample_indices(2, torch.arange(3))).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match=r"A batch mixes the samples of prompts \[0, 1\]"):
        batch_prompt(torch.tensor([0, PROMPT_STRIDE]))


def test_sample_i_of_prompt_p_depends_only_on_seed_p_and_i(tiny_sd: Path) -> None:
    prompts = Prompts(neutral=["a photo of a nurse", "a photo of a pilot"], classes=["{prompt}, a woman", "{prompt}"])
    method = ConditionalSampling(str(tiny_sd), sampler={"num_inference_steps": 2}, prompts=prompts)
    few, _ = method.sample(sample_indices(1, torch.arange(2)))
    more, _ = method.sample(sample_indices(1, torch.arange(4)))
    torch.testing.assert_close(few, more[:2])
    first_prompt, _ = method.sample(sample_indices(0, torch.arange(2)))
    assert not torch.allclose(first_prompt, few)
    assert method.num_prompts == 2
    assert method.class_prompt(0, 1) == "a photo of a pilot, a woman"


def test_across_prompts_gives_mean_spread_and_worst_prompt() -> None:
    class Result:
        def __init__(self, values: dict) -> None:
            self.values = values

        def metrics(self) -> dict:
            return self.values

    results = [Result({"fd": 0.1, "clip_score": 30.0}), Result({"fd": 0.5, "clip_score": 20.0}), Result({"fd": None})]
    summary = across_prompts(results, ["a", "b", "c"])
    assert summary["fd"] == {
        "mean": pytest.approx(0.3),
        "std": pytest.approx(0.2),
        "prompts": 2,
        "worst": 0.5,
        "worst_prompt": "b",
    }
    assert summary["clip_score"]["worst_prompt"] == "b"


def test_a_test_run_reports_every_metric_per_prompt_and_writes_a_folder_per_prompt(
    tiny_setup: Callable[..., Path], tiny_sd: Path, tmp_path: Path
) -> None:
    prompts_file = tmp_path / "prompts.csv"
    prompts_file.write_text(OCCUPATIONS)
    prompts = {
        "file": str(prompts_file),
        "classes": ["a woman who is a {occupation}", "a man who is a {occupation}"],
        "attribute": "Male",
        "negative": "blurry",
    }
    setup = tiny_setup(backbone=tiny_sd, prompts=prompts)
    output = tmp_path / "generated"
    method = tmp_path / "method.yaml"
    method.write_text(
        yaml.safe_dump(
            {
                "name": "conditional",
                "model": {
                    "class_path": "ConditionalSampling",
                    "init_args": {
                        "backbone": "${backbone}",
                        "prompts": "${prompts}",
                        "sampler": {"num_inference_steps": 2, "cfg_scale": 2.0},
                    },
                },
                "data": {"init_args": {"num_samples": 3, "batch_size": 2}},
                "trainer": {
                    "callbacks": [{"class_path": "GenerationWriter", "init_args": {"output_dir": str(output)}}]
                },
            }
        )
    )
    main(["test", "-c", str(setup), "-c", str(method)])
    record = json.loads(next((tmp_path / "runs" / "conditional").rglob("metrics.json")).read_text())
    assert record["metrics"]["num_samples"] == 6
    per_prompt = record["per_prompt"]
    assert [entry["prompt"] for entry in per_prompt] == ["a photo of a nurse", "a photo of a pilot"]
    assert per_prompt[1]["metadata"] == {"occupation": "pilot", "category": "transport"}
    assert [entry["metrics"]["num_samples"] for entry in per_prompt] == [3, 3]
    shares = [entry["metrics"]["proportion/Male=1"] for entry in per_prompt]
    overall = record["metrics"]["proportion/Male=1"]
    assert overall == pytest.approx(sum(shares) / 2)  # the same number of samples per prompt
    assert record["across_prompts"]["proportion/Male=1"]["mean"] == pytest.approx(sum(shares) / 2)
    assert sorted(path.relative_to(output / "images").as_posix() for path in output.rglob("*.png")) == [
        f"prompt_{p:03d}/{i:06d}.png" for p in range(2) for i in range(3)
    ]
    with (output / "generations.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["prompt"] for row in rows] == ["a photo of a nurse"] * 3 + ["a photo of a pilot"] * 3


@pytest.mark.slow  # two command-line runs in subprocesses, about 50 s
def test_one_and_two_processes_give_the_same_per_prompt_metrics(
    tiny_setup: Callable[..., Path], tiny_sd: Path, tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    """Exact per-prompt counts: a 2-process gloo run and a 1-process run give the same per-prompt metrics."""
    prompts = {"neutral": ["a photo of a nurse", "a photo of a pilot", "a photo of a cook"]}
    setup = tiny_setup(backbone=tiny_sd, prompts=prompts)
    method = write_config("plain", text_method("plain", "PlainSampling", num_samples=3, batch_size=2))
    records = {}
    for devices in (1, 2):
        strategy = ["--trainer.strategy=ddp"] if devices == 2 else []
        name = f"--name=plain_{devices}"
        run = [sys.executable, "-m", "lightning_fair", "test", "-c", str(setup), "-c", str(method), name]
        result = subprocess.run([*run, f"--trainer.devices={devices}", *strategy], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        records[devices] = json.loads(next((tmp_path / "runs" / f"plain_{devices}").rglob("metrics.json")).read_text())
    one, two = records[1], records[2]
    assert [entry["metrics"]["num_samples"] for entry in two["per_prompt"]] == [3, 3, 3]
    for entry_one, entry_two in zip(one["per_prompt"], two["per_prompt"], strict=True):
        for name, value in entry_one["metrics"].items():
            if name.startswith(("proportion/", "fd", "unknown/", "num_samples", "bias_score", "dp_gap")):
                assert entry_two["metrics"][name] == (None if value is None else pytest.approx(value, abs=1e-9)), name
    assert two["across_prompts"]["fd"] == pytest.approx(one["across_prompts"]["fd"])


def test_adps_train_on_generated_images_of_the_prompts_without_a_dataset(
    tiny_setup: Callable[..., Path], tiny_sd: Path, tmp_path: Path
) -> None:
    """Distribution Guidance's fit without train_data: ADPs learn from unguided samples of every neutral prompt."""
    from lightning_fair.cli import build_cli

    setup = tiny_setup(backbone=tiny_sd, prompts={"neutral": ["a photo of a nurse", "a photo of a pilot"]})
    method = tmp_path / "dg.yaml"
    method.write_text(
        yaml.safe_dump(
            {
                "name": "dg",
                "model": {
                    "class_path": "DistributionGuidance",
                    "init_args": {
                        "backbone": "${backbone}",
                        "prompts": "${prompts}",
                        "classifier": "${classifier}",
                        "target_distributions": {"Male": [0.5, 0.5]},
                        "guidance_scale": 10.0,
                        "sampler": {"num_inference_steps": 2},
                    },
                },
                "data": {"init_args": {"train_data": None, "calibration_samples": 3, "batch_size": 2}},
                "trainer": {"max_epochs": 1, "enable_progress_bar": False},
            }
        )
    )
    cli = build_cli(["-c", str(setup), "-c", str(method)], run=False)
    before = {name: value.clone() for name, value in cli.model.predictors.state_dict().items()}
    seen = []
    original = cli.model.training_images

    def record(batch: dict) -> torch.Tensor:
        seen.append(batch_prompt(batch["index"]))
        images = original(batch)
        assert images.shape[1:] == (3, 32, 32)
        return images

    read_under = []
    original_features = cli.model.training_features

    def features(images: torch.Tensor, generators: list, prompt: int = 0) -> tuple:
        read_under.append(prompt)
        return original_features(images, generators, prompt)

    cli.model.training_images = record
    cli.model.training_features = features
    cli.trainer.fit(cli.model, cli.datamodule)
    assert seen == [0, 0, 1, 1]  # 3 samples of each prompt in batches of 2
    assert read_under == seen  # h of each image under the prompt it was drawn from
    after = cli.model.predictors.state_dict()
    assert any(not torch.equal(before[name], after[name]) for name in before)


def test_the_occupation_recipe_runs_without_a_dataset(
    tmp_path: Path, cli_error: Callable[[list[str]], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Stable Diffusion occupations setup on the shipped tiny models: 40 prompts, no images, zero-shot scores."""
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)  # the setup names its prompt and classifier files relative to the checkout
    setup = ["-c", "configs/setups/stable_diffusion_occupations.yaml"]
    shipped = ["--backbone=synthetic_faces_sd", "--classifier=synthetic_faces_clip"]
    quick = ["--model.init_args.sampler.num_inference_steps=2", "--data.init_args.batch_size=4"]
    plain = tmp_path / "plain"
    arguments = ["-c", "configs/methods/plain.yaml", *shipped, *quick, f"--trainer.default_root_dir={plain}"]
    main(["test", *setup, *arguments, "--data.init_args.num_samples=2", "--trainer.callbacks=[]"])
    metrics = json.loads(next(plain.rglob("metrics.json")).read_text())
    first = metrics["per_prompt"][0]
    assert (first["prompt"], first["metadata"]["occupation"]) == ("a photo of a driver", "driver")
    assert len(metrics["per_prompt"]) == 40
    assert metrics["metrics"]["num_samples"] == 80
    assert "clip_score" in metrics["metrics"]
    guidance = ["-c", "configs/methods/distribution_guidance.yaml", *shipped, *quick]
    # Distribution Guidance's ADPs on 40 generated images, one per prompt
    main(
        [
            "fit",
            *setup,
            *guidance,
            "--data.init_args.calibration_samples=1",
            f"--trainer.default_root_dir={tmp_path}/dg",
        ]
    )
    assert (tmp_path / "dg" / "checkpoints" / "last.ckpt").is_file()
    self_guidance = ["-c", "configs/methods/self_guidance.yaml", *shipped, f"--trainer.default_root_dir={tmp_path}"]
    assert cli_error(["fit", *setup, *self_guidance]).startswith(
        "error: SelfGuidance trains on real images: give 'data.init_args.train_data'"
    )


@pytest.mark.parametrize("name", ["winobias_occupations.csv", "professions.csv", "synthetic_faces_captions.csv"])
def test_every_shipped_prompt_set_reads(name: str) -> None:
    """The shipped lists: unique prompts, each a photo of its occupation (or a person), its metadata complete."""
    prompt_set = PromptSet.read(Path(__file__).resolve().parents[1] / "configs" / "prompts" / name)
    assert len(set(prompt_set.prompts)) == len(prompt_set) >= 5
    for prompt, metadata in zip(prompt_set.prompts, prompt_set.metadata, strict=True):
        assert prompt.startswith("a photo of ")
        if "occupation" in metadata:
            assert prompt.endswith(f" {metadata['occupation']}")
            article = prompt.split()[3]
            assert article == ("an" if metadata["occupation"][0].lower() in "aeiou" else "a"), prompt
