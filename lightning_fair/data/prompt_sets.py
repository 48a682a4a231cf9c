"""Prompt sets: the neutral prompts of a text-to-image run (a list or a file), and how samples are indexed by prompt.

Sample ``i`` of prompt ``p`` has the global index ``p * PROMPT_STRIDE + i``, so it depends only on ``(seed, p, i)``
whatever the number of samples per prompt, and a run of one prompt indexes its samples ``0..n-1`` as before.
"""

from __future__ import annotations

import csv
import string
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

PROMPT_STRIDE = 1 << 32  # global index of sample i of prompt p: p * PROMPT_STRIDE + i
PROMPT_COLUMN = "prompt"
SLOT_EXAMPLE = "'a photo of a female {occupation}' or '{prompt}, female'"


@dataclass(frozen=True)
class PromptSet:
    """Neutral prompts, each with the metadata columns of its row (e.g. an occupation's category).

    Attributes:
        prompts: the prompts, in order (prompt ``p`` is ``prompts[p]``).
        metadata: per prompt, its other columns by name (empty for a list or a text file).
        source: where they came from, for messages (a file, or the option that listed them).
    """

    prompts: tuple[str, ...]
    metadata: tuple[dict[str, str], ...] = field(default=())
    source: str = "prompts.neutral"

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError(f"'{self.source}' holds no prompt; expected at least one")
        if any(not prompt.strip() for prompt in self.prompts):
            raise ValueError(f"'{self.source}' holds an empty prompt; every prompt needs words")
        if not self.metadata:
            object.__setattr__(self, "metadata", tuple({} for _ in self.prompts))

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def read(cls, path: str | Path) -> PromptSet:
        """The prompts of a text or CSV file.

        A text file holds one prompt per line (blank lines and lines starting with ``#`` skipped); a CSV file has a
        ``prompt`` column, and its other columns are each prompt's metadata.

        Raises:
            FileNotFoundError: naming the file if it does not exist.
            ValueError: naming the file if it holds no prompt, or a CSV file has no ``prompt`` column.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Option 'prompts.file': no prompt file at '{path.resolve()}'")
        if path.suffix.lower() != ".csv":
            lines = [line.strip() for line in path.read_text().splitlines()]
            return cls(tuple(line for line in lines if line and not line.startswith("#")), source=str(path))
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or PROMPT_COLUMN not in reader.fieldnames:
                raise ValueError(
                    f"'{path}' has no '{PROMPT_COLUMN}' column (columns: {reader.fieldnames or []}); a CSV prompt "
                    f"file needs one, other columns are metadata"
                )
            rows = [row for row in reader if (row.get(PROMPT_COLUMN) or "").strip()]
        prompts = tuple(row[PROMPT_COLUMN].strip() for row in rows)
        metadata = tuple({name: value for name, value in row.items() if name != PROMPT_COLUMN} for row in rows)
        return cls(prompts, metadata if prompts else (), str(path))

    def fill(self, template: str, prompt: int, option: str) -> str:
        """``template`` for prompt ``prompt``: ``{prompt}`` is the prompt, ``{<column>}`` its metadata.

        Raises:
            ValueError: naming ``option`` if the template names a field the prompt set lacks.
        """
        fields = {PROMPT_COLUMN: self.prompts[prompt], **self.metadata[prompt]}
        missing = [name for name in template_fields(template) if name not in fields]
        if missing:
            raise ValueError(
                f"Option '{option}': template {template!r} names {missing}, which '{self.source}' lacks (it has "
                f"{sorted(fields)})"
            )
        return template.format(**fields)


def template_fields(template: str) -> list[str]:
    """The names of the ``{...}`` fields of a template, in order."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]


def sample_indices(prompt: int, numbers: Tensor) -> Tensor:
    """Global indices of samples ``numbers`` of prompt ``prompt``."""
    return prompt * PROMPT_STRIDE + numbers


def prompt_of(indices: Tensor) -> Tensor:
    """The prompt of each global sample index."""
    return torch.div(indices, PROMPT_STRIDE, rounding_mode="floor")


def sample_numbers(indices: Tensor) -> Tensor:
    """The number of each sample within its prompt."""
    return indices % PROMPT_STRIDE


def batch_prompt(indices: Tensor) -> int:
    """The one prompt of a batch of samples (0 for an empty batch), or a ``ValueError`` if it mixes prompts."""
    prompts = prompt_of(indices.cpu()).unique().tolist()
    if len(prompts) > 1:
        raise ValueError(f"A batch mixes the samples of prompts {prompts}; batches hold one prompt each")
    return int(prompts[0]) if prompts else 0
