r"""Sampling-speed benchmark: throughput of the plain sampler over batch sizes and denoising step counts.

Each (batch size, steps) configuration runs in a fresh child process (``multiprocessing`` spawn context), so
that its memory numbers are its own. The child builds :class:`~lightning_fair.methods.PlainSampling` on the
backbone, records the memory in use, samples one warm-up batch, then times ``--repeats`` batches of new sample
indices (the full reverse process of ``PlainSampling.sample``, initial noise included) and keeps the fastest,
the one least disturbed by other work on the machine. The table has, per configuration:

- ``images/s``: batch size over the best batch time;
- ``s/batch``: the best batch time;
- ``ms/image-step``: the best batch time per image and per denoising step (one UNet evaluation each);
- ``peak MiB``: peak memory while sampling (warm-up and timed batches), the model included. On CUDA,
  ``torch.cuda.max_memory_allocated`` (tensors only, not the allocator's cache), reset after loading. On CPU,
  the child's resident-set high-water mark (``ru_maxrss``), which also counts the interpreter, torch and the
  model, and cannot be reset;
- ``base MiB``: the same measure right after loading the model, before sampling (CUDA: memory allocated, i.e.
  the weights; CPU: the resident set size);
- ``sampling MiB``: ``peak - base``, what sampling itself adds. On CPU it is marked ``<=`` (an upper bound)
  when sampling never raised the high-water mark set while loading;
- ``speed ratio``: images/s over that of the reference row (batch 64 with 25 steps when measured, else the
  first row measured);
- for a latent text-to-image backbone (a ``StableDiffusionPipeline`` folder), ``pipeline images/s``: the same
  model sampled by diffusers' own ``StableDiffusionPipeline`` in the same child, with the same DDIM scheduler
  (``eta`` 0), steps, batch, prompt, guidance scale (``--cfg-scale``) and precision (half on a GPU), timed in
  turns with the framework's sampler, and ``vs pipeline``: the framework's images/s over the pipeline's (1.0 is
  as fast; 0.95 is 5% slower).

Usage (from the repository root)::

    python benchmarks/sampling_speed.py --backbone synthetic_faces_unet --batch-sizes 16,64,256 \
        --steps 10,25,50 --scheduler ddim --repeats 2 --out sampling_speed.json
    python benchmarks/sampling_speed.py --backbone synthetic_faces_sd --batch-sizes 64 --steps 25

A configuration that runs out of memory is reported as failed and the sweep goes on. ``--out`` writes a JSON
list of rows with ``batch_size``, ``steps``, ``scheduler``, ``device``, ``images_per_second``,
``seconds_per_batch``, ``ms_per_image_step``, ``peak_memory_mib``, ``speed_ratio`` (``null`` for a failed
configuration), plus ``baseline_memory_mib``, ``sampling_memory_mib``, ``sampling_memory_is_upper_bound``,
``repeat_seconds``, ``pipeline_images_per_second``, ``pipeline_ratio`` (both ``null`` for a pixel backbone) and
``error``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import multiprocessing
import os
import resource
import sys
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

REFERENCE = (64, 25)  # (batch size, steps) of the row the speed ratios are relative to, when measured
MIB = 1024**2


def current_rss_mib() -> float:
    """Resident set size of this process now, in MiB (Linux ``/proc``; else the high-water mark so far)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return peak_rss_mib()
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


def peak_rss_mib() -> float:
    """Resident-set high-water mark of this process (``ru_maxrss``) in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    backbone: str, batch_size: int, steps: int, scheduler: str, device: str, repeats: int, cfg_scale: float = 1.0
) -> dict[str, Any]:
    """Times and profiles one configuration in the current process (meant to be a fresh child).

    Returns:
        The row's measurements and an ``environment`` entry (torch version, threads, parameters, device name).
    """
    from lightning_fair.diffusion import SamplerConfig
    from lightning_fair.methods import PlainSampling

    target = torch.device(device)
    config = SamplerConfig(scheduler=scheduler, num_inference_steps=steps, eta=0.0, cfg_scale=cfg_scale)
    method = PlainSampling(backbone, sampler=config, seed=0).to(target)
    method.backbone.use_precision_for(target)
    pipeline = diffusers_pipeline(method) if method.backbone.is_latent else None
    unet_calls = len(method.sampler.timesteps)
    gc.collect()
    if target.type == "cuda":
        synchronize(target)
        baseline = torch.cuda.memory_allocated(target) / MIB
        torch.cuda.reset_peak_memory_stats(target)
    else:
        baseline, load_peak = current_rss_mib(), peak_rss_mib()

    def run_pipeline() -> None:
        prompt = [method.backbone.neutral_prompt or ""] * batch_size
        options = {"num_inference_steps": steps, "guidance_scale": cfg_scale, "eta": 0.0, "output_type": "pt"}
        pipeline(prompt, **options)

    with torch.inference_mode():  # as Lightning samples
        method.sample(torch.arange(batch_size))  # warm-up: lazy initialisation, kernel selection, allocator growth
        if pipeline is not None:
            run_pipeline()
        times, pipeline_times = [], []
        for repeat in range(1, repeats + 1):
            indices = torch.arange(repeat * batch_size, (repeat + 1) * batch_size)
            times.append(timed(functools.partial(method.sample, indices), target))
            if pipeline is not None:  # in turns, so that both see the same machine load
                pipeline_times.append(timed(run_pipeline, target))

    if target.type == "cuda":
        peak, upper_bound = torch.cuda.max_memory_allocated(target) / MIB, False
        device_name = torch.cuda.get_device_name(target)
    else:
        peak = peak_rss_mib()
        upper_bound = peak <= load_peak  # the high-water mark was set while loading, not while sampling
        device_name = "cpu"
    best = min(times)
    pipeline_speed = batch_size / min(pipeline_times) if pipeline_times else None
    return {
        "pipeline_images_per_second": pipeline_speed,
        "pipeline_ratio": None if pipeline_speed is None else (batch_size / best) / pipeline_speed,
        "images_per_second": batch_size / best,
        "seconds_per_batch": best,
        "ms_per_image_step": 1000 * best / (batch_size * unet_calls),
        "peak_memory_mib": peak,
        "baseline_memory_mib": baseline,
        "sampling_memory_mib": peak - baseline,
        "sampling_memory_is_upper_bound": upper_bound,
        "repeat_seconds": times,
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "parameters": sum(parameter.numel() for parameter in method.backbone.parameters()),
            "device_name": device_name,
        },
    }


def timed(function: Any, device: torch.device) -> float:
    """Seconds ``function()`` takes, queued device work included."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def diffusers_pipeline(method: Any) -> Any:
    """Diffusers' ``StableDiffusionPipeline`` over the method's own modules and scheduler settings."""
    from diffusers import StableDiffusionPipeline

    backbone = method.backbone
    pipeline = StableDiffusionPipeline(
        vae=backbone.vae,
        text_encoder=backbone.text_encoder,
        tokenizer=backbone.tokenizer,
        unet=backbone.unet,
        scheduler=type(method.sampler.scheduler).from_config(method.sampler.scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def child_main(connection: Connection, threads: int | None, arguments: tuple[Any, ...]) -> None:
    """Child-process entry point: runs :func:`measure` and sends ``(status, result or message)`` back."""
    try:
        if threads:
            torch.set_num_threads(threads)
        connection.send(("ok", measure(*arguments)))
    except (torch.cuda.OutOfMemoryError, MemoryError) as error:
        connection.send(("oom", f"out of memory: {str(error).splitlines()[0] if str(error) else type(error).__name__}"))
    except BaseException:
        connection.send(("error", traceback.format_exc()))
    finally:
        connection.close()


def run_in_child(threads: int | None, arguments: tuple[Any, ...]) -> tuple[str, Any]:
    """Runs one configuration in a fresh spawned process; a child killed (e.g. by the OOM killer) is reported."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=child_main, args=(sender, threads, arguments))
    process.start()
    sender.close()
    try:
        status, payload = receiver.recv()
    except EOFError:
        process.join()
        status, payload = "oom", f"child process died (exit code {process.exitcode})"
    process.join()
    return status, payload


def add_speed_ratios(rows: list[dict[str, Any]]) -> str | None:
    """Sets each row's ``speed_ratio``; returns the reference's description (``None`` if nothing ran)."""
    measured = [row for row in rows if row["images_per_second"] is not None]
    if not measured:
        for row in rows:
            row["speed_ratio"] = None
        return None
    matching = [row for row in measured if (row["batch_size"], row["steps"]) == REFERENCE]
    reference = (matching or measured)[0]
    for row in rows:
        speed = row["images_per_second"]
        row["speed_ratio"] = None if speed is None else speed / reference["images_per_second"]
    return f"batch {reference['batch_size']}, {reference['steps']} steps"


def format_number(value: float | None, digits: int) -> str:
    """``value`` with ``digits`` decimals, ``-`` for a missing value."""
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| batch | steps | images/s | s/batch | ms/image-step | peak MiB | base MiB | sampling MiB | speed ratio "
        "| pipeline images/s | vs pipeline |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["images_per_second"] is None:
            error = str(row["error"]).replace("|", "/")
            lines.append(f"| {row['batch_size']} | {row['steps']} | failed: {error} | | | | | | | | |")
            continue
        bound = "<= " if row["sampling_memory_is_upper_bound"] else ""
        lines.append(
            f"| {row['batch_size']} | {row['steps']} | {format_number(row['images_per_second'], 1)} | "
            f"{format_number(row['seconds_per_batch'], 3)} | {format_number(row['ms_per_image_step'], 3)} | "
            f"{format_number(row['peak_memory_mib'], 1)} | {format_number(row['baseline_memory_mib'], 1)} | "
            f"{bound}{format_number(row['sampling_memory_mib'], 1)} | {format_number(row['speed_ratio'], 3)} | "
            f"{format_number(row['pipeline_images_per_second'], 1)} | {format_number(row['pipeline_ratio'], 3)} |"
        )
    return "\n".join(lines)


def parse_int_list(text: str, option: str) -> list[int]:
    """``"16,64"`` as ``[16, 64]``; anything but positive integers is an error naming ``option``."""
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise SystemExit(f"{option} expects comma-separated positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"{option} expects comma-separated positive integers, got {text!r}")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's options."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="synthetic_faces_unet", help="diffusers folder or shipped model name")
    parser.add_argument("--batch-sizes", default="16,64,256", help="comma-separated batch sizes")
    parser.add_argument("--steps", default="10,25,50", help="comma-separated denoising step counts")
    parser.add_argument("--scheduler", choices=["ddim", "ddpm"], default="ddim", help="sampler (DDIM with eta=0)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    parser.add_argument("--repeats", type=int, default=2, help="timed batches after the warm-up; the best is kept")
    parser.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (text models)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads in each child (1 is steadiest on a busy machine)",
    )
    parser.add_argument("--out", default=None, help="JSON file for the rows")
    options = parser.parse_args(argv)
    if options.repeats < 1:
        parser.error("--repeats must be at least 1")
    if options.threads is not None and options.threads < 1:
        parser.error("--threads must be at least 1")
    return options


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """Measures every configuration, prints the table, writes the JSON; returns the rows."""
    options = parse_args(argv)
    batch_sizes = parse_int_list(options.batch_sizes, "--batch-sizes")
    step_counts = parse_int_list(options.steps, "--steps")
    device = str(torch.device(options.device))
    rows: list[dict[str, Any]] = []
    environment: dict[str, Any] = {}
    for batch_size in batch_sizes:
        for steps in step_counts:
            print(f"measuring batch {batch_size}, {steps} steps ...", file=sys.stderr, flush=True)
            arguments = (
                options.backbone,
                batch_size,
                steps,
                options.scheduler,
                device,
                options.repeats,
                options.cfg_scale,
            )
            status, result = run_in_child(options.threads, arguments)
            if status == "error":
                raise SystemExit(f"batch {batch_size}, {steps} steps failed:\n{result}")
            row: dict[str, Any] = {"batch_size": batch_size, "steps": steps, "scheduler": options.scheduler}
            row["device"] = device
            if status == "ok":
                child_environment = result.pop("environment")
                environment = environment or child_environment
                row.update(result, error=None)
            else:
                keys = ("images_per_second", "seconds_per_batch", "ms_per_image_step", "peak_memory_mib")
                keys += ("baseline_memory_mib", "sampling_memory_mib", "sampling_memory_is_upper_bound")
                keys += ("pipeline_images_per_second", "pipeline_ratio")
                row.update(dict.fromkeys(keys), repeat_seconds=[], error=result)
            rows.append(row)
    reference = add_speed_ratios(rows)

    print(f"device: {device} ({environment.get('device_name', 'unknown')})")
    print(f"torch: {torch.__version__}, threads: {environment.get('threads', 'unknown')}")
    parameters = environment.get("parameters")
    print(f"backbone: {options.backbone} ({'unknown' if parameters is None else f'{parameters:,}'} parameters)")
    print(f"scheduler: {options.scheduler}, best of {options.repeats} timed batch(es) after one warm-up batch")
    memory = "CUDA max_memory_allocated" if device.startswith("cuda") else "child resident-set high-water mark"
    print(f"peak memory: {memory}; base: after loading the model; sampling = peak - base")
    print(f"speed ratio: images/s relative to {reference or 'nothing (every configuration failed)'}")
    print()
    print(markdown_table(rows))
    if options.out:
        out = Path(options.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        temporary = out.with_name(f".{out.name}.tmp")
        temporary.write_text(json.dumps(rows, indent=2) + "\n")
        temporary.replace(out)
    return rows


if __name__ == "__main__":
    main()
