"""Per-image values of a split kept in a file, read back by dataset index, with where they came from."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import Dataset

from lightning_fair.utils.distributed import gather_rows
from lightning_fair.utils.files import replace_atomically

INDEX_KEY = "indices"


def split_fingerprint(image_paths: list[Path], root: Path) -> str:
    """A hash of the images of a split (their paths under ``root``, in order): which data a file of rows is of."""
    names = "\n".join(str(path.relative_to(root)) if path.is_relative_to(root) else path.name for path in image_paths)
    return hashlib.sha256(names.encode()).hexdigest()[:16]


@dataclass
class KeyedRows:
    """Tensors with one row per image, keyed by the images' dataset indices, and their provenance.

    Written as one safetensors file (the provenance as its metadata), so that a later run reads the rows of any batch
    by its ``index`` and refuses rows made from other data or by another model.

    Attributes:
        indices: dataset indices (table rows), sorted, ``(N,)``.
        tensors: named tensors of ``N`` rows each.
        provenance: what the rows were made from (e.g. ``backbone``, ``split``, ``fingerprint``).
    """

    indices: Tensor
    tensors: dict[str, Tensor]
    provenance: dict[str, str]

    def save(self, path: Path) -> None:
        """Writes the file atomically."""
        tensors = {INDEX_KEY: self.indices.long(), **{name: value.contiguous() for name, value in self.tensors.items()}}
        replace_atomically(path, lambda temporary: save_file(tensors, str(temporary), metadata=self.provenance))

    @classmethod
    def load(cls, path: Path, option: str, kind: str) -> KeyedRows:
        """Reads a file :meth:`save` wrote; anything else is a one-line error naming ``option`` and the file."""
        try:
            with safe_open(str(path), "pt") as handle:
                provenance = dict(handle.metadata() or {})
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
            indices = tensors.pop(INDEX_KEY)
        except Exception as error:  # any unreadable file gets the same one-line message
            raise ValueError(f"Option '{option}': '{path}' is not a {kind} file ({type(error).__name__})") from None
        return cls(indices, tensors, provenance)

    def check(self, path: Path, option: str, kind: str, expected: dict[str, str]) -> None:
        """Refuses rows whose provenance differs from ``expected`` in any key, naming the first difference."""
        for key, value in expected.items():
            saved = self.provenance.get(key)
            if saved != value:
                raise ValueError(
                    f"Option '{option}': '{path}' holds {kind} of {key} {saved!r}, not {value!r} as here "
                    f"({len(self.indices)} images of '{self.provenance.get('dataset')}'); delete it to make it again"
                )

    def rows(self, name: str, indices: Tensor) -> Tensor:
        """The rows of tensor ``name`` for the images with dataset ``indices`` (each must be in the file)."""
        wanted = indices.cpu()
        position = torch.searchsorted(self.indices, wanted).clamp(max=len(self.indices) - 1)
        found = self.indices[position] == wanted
        if not found.all():
            raise ValueError(f"Dataset index {int(wanted[~found][0])} has no row in the file")
        return self.tensors[name][position]


def sharded_pass(
    dataset: Dataset,
    compute: Callable[[dict[str, Tensor]], Tensor],
    batch_size: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[Tensor, Tensor]:
    """``compute`` on every batch of ``dataset``, shared among the processes, gathered and keyed by dataset index.

    Batch ``b`` of the dataset's order goes to process ``b % world_size``; each batch holds the same images whatever
    the number of processes, so a per-image computation gives the same values on 1 or N processes. Every process
    returns all rows, each image once.

    Args:
        dataset: items with ``image``, ``attributes`` and ``index``, in a fixed order.
        compute: one value row per image of a batch (a dict of stacked items on ``device``).
        batch_size: images per batch.
        device: where the batches go.
        rank: this process's rank.
        world_size: number of processes sharing the pass.

    Returns:
        Dataset indices (sorted) and their rows, on the CPU.
    """
    indices, values = [], []
    for start in range(rank * batch_size, len(dataset), world_size * batch_size):
        items = [dataset[item] for item in range(start, min(start + batch_size, len(dataset)))]
        batch = {key: torch.stack([item[key] for item in items]).to(device) for key in items[0]}
        indices.append(batch["index"].cpu())
        values.append(compute(batch).cpu())
    if not values:  # a process without a batch still sends its (empty) share
        sample = dataset[0]
        batch = {key: value[None].to(device) for key, value in sample.items()}
        values.append(compute(batch).cpu()[:0])
        indices.append(torch.empty(0, dtype=torch.long))
    index = gather_rows(torch.cat(indices).to(device)).cpu()
    value = gather_rows(torch.cat(values).to(device)).cpu()
    order = torch.argsort(index)
    return index[order], value[order]
