r"""Cost at real scale: every registered method on a Stable Diffusion 1.5- or SDXL-size model with random weights.

Nothing is downloaded: the pipeline is built from the architecture's configs (SD 1.5: an 860M-parameter UNet,
512x512 images; SDXL: a 2.6B-parameter UNet, two text encoders, 1024x1024) with random weights and written once to
``--folder`` (a character tokenizer stands in for CLIP's; it changes no cost). Each method is built on that folder
with its sampling options only (untrained modules sample at the trained cost), then one batch of ``--batch-size``
samples of ``--steps`` DDIM steps is timed (the fastest of ``--repeats``), after a warm-up batch with ``--warmup``.
Diffusers' own pipeline (``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline``) samples the same batch with the
same scheduler, steps and guidance in the same run, before and after the methods; its mean is the reference. Per
method the table gives:

- ``seconds``: the timed batch;
- ``vs plain`` and ``vs pipeline``: its time over plain's and over the pipeline's (1.0: as fast);
- ``UNet parts``: UNet evaluations per step and sample it makes by design (classifier-free guidance: 2, else 1;
  Fair Diffusion: the prompt, the null prompt and one per edit prompt; InvDiff's default delta UNet, a quarter of the
  backbone's widths, adds about a sixteenth of a UNet to each and is not counted), the
  cost it should have;
- ``peak MiB``: on CUDA, ``torch.cuda.max_memory_allocated`` while sampling (reset per method, the model included);
  on CPU, the largest resident set seen while sampling, sampled every 50 ms, minus the one before it.

Usage (from the repository root)::

    python benchmarks/real_scale.py --architecture sd15 --steps 3 --batch-size 1 --out real_scale_sd15.json
    python benchmarks/real_scale.py --architecture sdxl --steps 2 --batch-size 1 --methods plain,fair_diffusion
    python benchmarks/real_scale.py --architecture sd15 --device cuda --steps 25 --batch-size 2 --warmup

``--methods`` names registered methods (default: all).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from sampling_speed import MIB, current_rss_mib, synchronize, timed

WORDS = ["a", "photo", "of", "the", "person", "woman", "man", "female", "male", "doctor"]
PROMPTS = {
    "neutral": "a photo of a doctor",
    "classes": ["a photo of a female doctor", "a photo of a male doctor"],
    "attribute": "Male",
}
CLASSIFIER = "synthetic_faces_clip"  # a zero-shot classifier of Male; its cost beside the UNet's is negligible


def sd15_parts() -> dict[str, Any]:
    """Stable Diffusion 1.5's UNet, VAE and text encoder, from their published configs (random weights)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    text = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    return {"unet": unet, "vae": sd_vae(512, 0.18215), "text_encoder": CLIPTextModel(text)}


def sdxl_parts() -> dict[str, Any]:
    """SDXL base's UNet, VAE and two text encoders, from their published configs (random weights)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet = UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    first = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
    second = CLIPTextConfig(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=20,
        projection_dim=1280,
        hidden_act="gelu",
    )
    return {
        "unet": unet,
        "vae": sd_vae(1024, 0.13025),
        "text_encoder": CLIPTextModel(first),
        "text_encoder_2": CLIPTextModelWithProjection(second),
    }


def sd_vae(size: int, scaling_factor: float) -> torch.nn.Module:
    """Stable Diffusion's ``AutoencoderKL`` (8x down-sampling, 4 latent channels)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=size,
        scaling_factor=scaling_factor,
    )


def write_pipeline(architecture: str, folder: Path) -> Path:
    """Writes the architecture's pipeline with random weights to ``folder`` (kept: a later run reuses it)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    from lightning_fair.data.vocabulary import build_tokenizer

    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(0)
    parts = sd15_parts() if architecture == "sd15" else sdxl_parts()
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    tokenizer = build_tokenizer(WORDS, max_length=77)
    if architecture == "sd15":
        pipeline = StableDiffusionPipeline(
            **parts,
            tokenizer=tokenizer,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    else:
        pipeline = StableDiffusionXLPipeline(
            **parts, tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=scheduler, add_watermarker=False
        )
    pipeline.save_pretrained(folder)
    return folder


def method_options(name: str, folder: str, sampler: dict[str, Any]) -> dict[str, Any]:
    """The arguments that build registered method ``name`` for sampling: its backbone, prompts, scales, classifier."""
    from lightning_fair.methods import Prompts

    base = {"backbone": folder, "sampler": sampler, "prompts": Prompts(**PROMPTS)}
    target = {"Male": [0.5, 0.5]}
    guided = {"classifier": CLASSIFIER, "target_distributions": target, "first_guided_step": 0}  # every step guides
    extra = {
        "distribution_guidance": {**guided, "guidance_scale": 15.0},
        "h_sample_guidance": {**guided, "guidance_scale": 4.0},
        "attribute_switching": {"tau": 500, "search_steps": 50},
        "self_guidance": {"classifier": None, "target_distributions": None, "calibration_scales": None},
        "invdiff": {"delta_channels": None},  # the default delta UNet: a quarter of the backbone's widths
        "fair_diffusion": {"edit_prompts": ["female person", "male person"], "edit_warmup_steps": 0},
        "uce": {"classifier": CLASSIFIER, "attribute_concepts": ["female", "male"]},
    }
    return {**base, **extra.get(name, {})}


def unet_parts(name: str, guided: bool) -> int:
    """UNet evaluations per step and sample the method makes by design (``guided``: classifier-free guidance on)."""
    branches = 2 if guided else 1
    if name == "fair_diffusion":
        return 4  # the prompt, the null prompt and the two edit prompts, whatever the guidance
    return branches


class PeakResidentSet:
    """The largest resident set of this process while the block runs (sampled every 50 ms), in MiB."""

    def __enter__(self) -> PeakResidentSet:
        self.peak, self._running = current_rss_mib(), True
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while self._running:
            self.peak = max(self.peak, current_rss_mib())
            time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        self._running = False
        self._thread.join()


def time_sampling(
    sample: Callable[[], Any], device: torch.device, warmup: bool, repeats: int = 1
) -> tuple[float, float]:
    """The fastest of ``repeats`` calls of ``sample`` (after an untimed one with ``warmup``), the peak memory added."""
    with torch.inference_mode():
        if warmup:
            sample()
        gc.collect()
        if device.type == "cuda":
            synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            seconds = min(timed(sample, device) for _ in range(repeats))
            return seconds, torch.cuda.max_memory_allocated(device) / MIB
        before = current_rss_mib()
        with PeakResidentSet() as watcher:
            seconds = min(timed(sample, device) for _ in range(repeats))
        return seconds, watcher.peak - before


def time_pipeline(folder: Path, device: torch.device, arguments: argparse.Namespace) -> tuple[float, float]:
    """Diffusers' own pipeline of the folder sampling the benchmark's batch: its time and peak memory.

    The pipeline is loaded for this measurement only, so that no two copies of the model are ever held at once.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    kind = StableDiffusionPipeline if arguments.architecture == "sd15" else StableDiffusionXLPipeline
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipeline = kind.from_pretrained(folder, dtype=dtype).to(device)
    pipeline.set_progress_bar_config(disable=True)
    options = {"num_inference_steps": arguments.steps, "guidance_scale": arguments.cfg_scale, "output_type": "pt"}
    call = functools.partial(pipeline, [PROMPTS["neutral"]] * arguments.batch_size, **options)
    measured = time_sampling(call, device, arguments.warmup, arguments.repeats)
    del pipeline, call
    gc.collect()
    print(f"pipeline: {measured[0]:.1f} s, peak {measured[1]:.0f} MiB", flush=True)
    return measured


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", choices=["sd15", "sdxl"], default="sd15")
    parser.add_argument("--folder", type=Path, default=None, help="where the random pipeline goes (default /tmp)")
    parser.add_argument("--methods", default=None, help="comma-separated registered methods (default: all)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--cfg-scale", type=float, default=7.5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--warmup", action="store_true", help="an untimed batch before each timed one")
    parser.add_argument("--repeats", type=int, default=1, help="timed batches per row; the fastest counts")
    parser.add_argument("--out", type=Path, default=None, help="a JSON file of the rows")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Writes the pipeline, times it and every method, prints the table."""
    from lightning_fair.methods import method_registry

    arguments = parse_args(argv)
    device = torch.device(arguments.device)
    folder = write_pipeline(
        arguments.architecture, arguments.folder or Path("/tmp") / f"lightning_fair_{arguments.architecture}"
    )
    registry = method_registry()
    names = arguments.methods.split(",") if arguments.methods else sorted(registry)
    unknown = sorted(set(names) - set(registry))
    if unknown:
        raise SystemExit(f"error: --methods names no registered method: {unknown}; registered: {sorted(registry)}")
    names = ["plain", *(name for name in names if name != "plain")]
    sampler = {"num_inference_steps": arguments.steps, "cfg_scale": arguments.cfg_scale, "eta": 0.0}
    reference = [time_pipeline(folder, device, arguments)]
    rows = []
    for name in names:
        method = registry[name](**method_options(name, str(folder), sampler)).to(device)
        method.backbone.use_precision_for(device)
        seconds, peak = time_sampling(
            lambda m=method: m.sample(torch.arange(arguments.batch_size)), device, arguments.warmup, arguments.repeats
        )
        rows.append(
            {
                "method": name,
                "seconds": seconds,
                "peak_mib": peak,
                "unet_parts": unet_parts(name, arguments.cfg_scale != 1.0),
            }
        )
        print(f"{name}: {seconds:.1f} s, peak {peak:.0f} MiB", flush=True)
        del method
        gc.collect()
    reference.append(time_pipeline(folder, device, arguments))
    pipeline_seconds = sum(seconds for seconds, _ in reference) / len(reference)
    plain = rows[0]["seconds"]
    for row in rows:
        row.update(vs_plain=row["seconds"] / plain, vs_pipeline=row["seconds"] / pipeline_seconds)
    print(
        f"\n{arguments.architecture}, {arguments.device}, batch {arguments.batch_size}, {arguments.steps} steps, "
        f"guidance {arguments.cfg_scale}: pipeline {reference[0][0]:.1f} s / {reference[1][0]:.1f} s "
        f"(peak {reference[0][1]:.0f} MiB)\n"
    )
    print("| method | seconds | vs plain | vs pipeline | UNet parts | peak MiB |\n|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['method']} | {row['seconds']:.1f} | {row['vs_plain']:.2f} | {row['vs_pipeline']:.2f} | "
            f"{row['unet_parts']} | {row['peak_mib']:.0f} |"
        )
    if arguments.out is not None:
        result = {"settings": vars(arguments) | {"folder": str(folder)}, "pipeline_seconds": reference, "rows": rows}
        arguments.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return rows


if __name__ == "__main__":
    main()
