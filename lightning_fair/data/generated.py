"""A folder of generated samples, where each sample is one self-contained record.

Layout::

    manifest.json           the settings the records were generated with, written before the first record
    images/000000.png ...   one record per sample: the 8-bit image and, in a PNG text chunk, its index, the
                            conditions it was generated with and the predicted attributes
    images/prompt_001/...   the same, a folder per prompt, when a run samples a prompt set (sample i of prompt p is
                            images/prompt_<p>/<i>.png, its index p * PROMPT_STRIDE + i)
    generations.csv         a table of every record, rebuilt from the records at the end of a run

A record is a single file, written under a temporary name and renamed once complete: whenever a process is killed,
a record exists complete or not at all, so 'done' simply means 'its PNG exists' and nothing else has to be written
together with it. (Files are not flushed to disk one by one, which would slow small models down several times; a
record damaged by an operating-system crash is reported, naming the file to delete, when it is read.) The table is
derived from the records and rewritten by every run, so it never disagrees with them. The manifest makes a folder
hold the samples of one set of settings only: a run with other settings is refused, a run with the same settings
resumes (see ``GenerationRequests(skip_existing=...)``).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule
from PIL import Image, PngImagePlugin
from torch import Tensor

from lightning_fair.data.prompt_sets import PROMPT_STRIDE
from lightning_fair.utils.files import replace_atomically, write_text_atomically

IMAGE_FOLDER = "images"
MANIFEST = "manifest.json"
TABLE = "generations.csv"
RECORD_KEY = "lightning_fair"
PROMPT_FOLDER = "prompt_{:03d}"


def record_path(folder: str | Path, index: int, per_prompt: bool = False) -> Path:
    """Path of the record of sample ``index``: ``images/<i>.png``, or ``images/prompt_<p>/<i>.png`` ``per_prompt``."""
    prompt, number = divmod(index, PROMPT_STRIDE)
    images = Path(folder) / IMAGE_FOLDER
    return (images / PROMPT_FOLDER.format(prompt) if per_prompt else images) / f"{number:06d}.png"


def stored_records(folder: str | Path) -> dict[int, Path]:
    """The record of each sample stored in ``folder``, by sample index (both layouts)."""
    images = Path(folder) / IMAGE_FOLDER
    records = {int(path.stem): path for path in images.glob("*.png") if path.stem.isdigit()}
    for prompt_folder in images.glob("prompt_*"):
        prompt = prompt_folder.name.removeprefix("prompt_")
        if prompt.isdigit():
            start = int(prompt) * PROMPT_STRIDE
            records |= {start + int(path.stem): path for path in prompt_folder.glob("*.png") if path.stem.isdigit()}
    return records


def stored_indices(folder: str | Path) -> set[int]:
    """Indices of the samples whose record is in ``folder``."""
    return set(stored_records(folder))


def to_pixels(images: Tensor) -> Tensor:
    """Images in [-1, 1], ``(B, C, H, W)``, as the 8-bit values a PNG stores (on the CPU)."""
    return ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def from_pixels(pixels: Tensor) -> Tensor:
    """8-bit images back in [-1, 1] (float32, on the pixels' device)."""
    return pixels.float() / 127.5 - 1


def as_stored(images: Tensor) -> Tensor:
    """Images in [-1, 1] exactly as a record stores them (quantised to 8 bits), on their device."""
    return from_pixels(to_pixels(images)).to(images.device)


def write_record(
    folder: str | Path,
    index: int,
    pixels: Tensor,
    conditions: dict[str, Any],
    predicted: dict[str, Any],
    prompt: str | None = None,
    per_prompt: bool = False,
) -> None:
    """Writes the record of sample ``index``: its 8-bit image ``(C, H, W)`` with its conditions and predictions.

    With a ``prompt`` (the neutral prompt it was sampled for) the record holds it too; ``per_prompt`` puts it in its
    prompt's folder (see :func:`record_path`).
    """
    text = PngImagePlugin.PngInfo()
    record = {"index": index, "conditions": conditions, "predicted": predicted}
    text.add_text(RECORD_KEY, json.dumps(record | ({} if prompt is None else {"prompt": prompt})))
    array = pixels.permute(1, 2, 0).squeeze(-1).numpy()
    path = record_path(folder, index, per_prompt)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, lambda temporary: Image.fromarray(array).save(temporary, "PNG", pnginfo=text))


def _read(path: Path, pixels: bool) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The pixels (if asked for) and the metadata of the record ``path``."""
    try:
        with Image.open(path) as image:
            text = image.text.get(RECORD_KEY)
            array = np.array(image) if pixels else None
    except (OSError, SyntaxError) as error:  # PIL's errors for a truncated or corrupt PNG
        raise ValueError(f"{path}: not a readable record ({error}); delete it to generate it again") from error
    if text is None:
        raise ValueError(f"{path}: not a record of lightning-fair's GenerationWriter (no metadata); delete it")
    return array, json.loads(text)


def read_record(folder: str | Path, index: int, per_prompt: bool = False) -> tuple[Tensor, dict[str, Any]]:
    """The 8-bit image ``(C, H, W)`` of sample ``index`` and its conditions (as written by :func:`write_record`)."""
    array, record = _read(record_path(folder, index, per_prompt), pixels=True)
    pixels = torch.from_numpy(array)
    return (pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1)), record["conditions"]


def write_table(folder: str | Path) -> None:
    """Rewrites ``generations.csv``: one row per record (index, prompt, conditions, predictions), by index."""
    rows = []
    for _, path in sorted(stored_records(folder).items()):
        _, record = _read(path, pixels=False)
        row = {"index": record["index"]} | ({"prompt": record["prompt"]} if "prompt" in record else {})
        row |= {f"condition_{name}": value for name, value in record["conditions"].items()}
        row |= {f"predicted_{name}": value for name, value in record["predicted"].items()}
        rows.append(row)

    def write(path: Path) -> None:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
            writer.writeheader()
            writer.writerows(rows)

    replace_atomically(Path(folder) / TABLE, write)


def fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 of a module's state (names, dtypes, shapes and values of every parameter and buffer)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def generation_settings(method: LightningModule, num_samples: int | None, batch_size: int | None) -> dict[str, Any]:
    """What the images of a run depend on: the method, its options and weights, and the requests."""
    options = {name: value for name, value in method.hparams.items() if not name.startswith("_")}
    return {
        "method": f"{type(method).__module__}.{type(method).__qualname__}",
        "hyperparameters": json.loads(json.dumps(options, sort_keys=True, default=str)),
        "weights": fingerprint(method),
        "num_samples": num_samples,
        "batch_size": batch_size,
        "prompts": list(prompt_set.prompts) if (prompt_set := getattr(method, "prompt_set", None)) else None,
    }


def _flatten(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for name, value in settings.items():
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{prefix}{name}.")
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _describe(name: str, there: Any, now: Any) -> str:
    values = f"{there!r} there, {now!r} now"
    return f"{name}: {values}" if len(values) <= 60 else f"{name} differs"


def check_manifest(folder: str | Path, settings: dict[str, Any]) -> None:
    """Refuses a folder whose records were generated with settings other than ``settings`` (those keys only).

    A folder without records is accepted; a folder with records but no manifest is refused (unknown settings).
    """
    folder = Path(folder)
    path = folder / MANIFEST
    advice = "write to a new folder or delete this one"
    if not path.is_file():
        if stored_indices(folder):
            raise ValueError(
                f"{folder}: holds generated images but no {MANIFEST}, so their settings are unknown; {advice}"
            )
        return
    recorded = _flatten(json.loads(path.read_text()))
    wanted = _flatten(json.loads(json.dumps(settings, default=str)))
    names = dict.fromkeys([*wanted, *(name for name in recorded if name.split(".")[0] in settings)])
    differences = [
        _describe(name, recorded.get(name, "(none)"), wanted.get(name, "(none)"))
        for name in names
        if recorded.get(name, "(none)") != wanted.get(name, "(none)")
    ]
    if differences:
        raise ValueError(
            f"{path}: the samples there were generated with other settings ({'; '.join(differences)}); {advice}"
        )


def write_manifest(folder: str | Path, settings: dict[str, Any]) -> None:
    """Records ``settings`` in ``folder`` if it has no manifest yet (call :func:`check_manifest` next)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(settings, indent=2, sort_keys=True, default=str) + "\n"
        write_text_atomically(path, text)
