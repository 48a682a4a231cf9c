"""The Attribute Distribution Predictor: attribute probabilities from UNet h-space, one head per timestep."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_fair.utils.files import write_csv_atomically


class AttributeDistributionPredictor(nn.Module):
    """Predicts one attribute from the h-space tensor (UNet mid-block output) at a given denoising timestep.

    As in the official code of Parihar et al. (2024), every timestep of the sampler has its own head over the
    flattened h (``linear``, the default); ``mlp`` puts one hidden layer in each head instead. A timestep the
    predictor was not built for is served by the head of the nearest one it was.

    Args:
        feature_shape: shape of h without the batch dimension, e.g. ``(64, 4, 4)``.
        num_classes: classes of the attribute.
        timesteps: the timesteps that get a head (the sampler's).
        head: ``linear`` or ``mlp``.
        hidden_features: width of the hidden layer of ``mlp`` heads.
    """

    def __init__(
        self,
        feature_shape: tuple[int, ...],
        num_classes: int,
        timesteps: Tensor,
        head: Literal["linear", "mlp"] = "linear",
        hidden_features: int = 256,
    ) -> None:
        super().__init__()
        if head not in ("linear", "mlp"):
            raise ValueError(f"Option 'head' must be 'linear' or 'mlp', got {head!r}")
        features = int(torch.Size(feature_shape).numel())
        self.num_classes = num_classes
        self.register_buffer("timesteps", torch.as_tensor(timesteps, dtype=torch.long).flatten().clone())

        def make_head() -> nn.Module:
            if head == "linear":
                return nn.Linear(features, num_classes)
            hidden = nn.Linear(features, hidden_features)
            return nn.Sequential(hidden, nn.SiLU(), nn.Linear(hidden_features, num_classes))

        self.heads = nn.ModuleList(make_head() for _ in range(len(self.timesteps)))

    def head_index(self, t: Tensor) -> Tensor:
        """Index of the head serving each timestep of ``t`` (the nearest timestep with a head)."""
        t = torch.as_tensor(t, device=self.timesteps.device).long().reshape(-1, 1)
        return (t - self.timesteps.reshape(1, -1)).abs().argmin(dim=1)

    def forward(self, h: Tensor, t: Tensor | int) -> Tensor:
        """Logits ``(B, num_classes)`` of h ``(B, *feature_shape)`` at timesteps ``t`` (scalar or ``(B,)``)."""
        flat = h.flatten(start_dim=1)
        index = self.head_index(torch.as_tensor(t, device=h.device).expand(h.shape[0]))
        unique = index.unique()
        if len(unique) == 1:
            return self.heads[int(unique)](flat)
        logits = flat.new_zeros(h.shape[0], self.num_classes)
        for head_index in unique.tolist():
            rows = (index == head_index).nonzero().flatten()
            logits = logits.index_put((rows,), self.heads[head_index](flat[rows]))
        return logits


def write_accuracy_table(path: Path, timesteps: list[int], table: dict[str, list[float]]) -> None:
    """Writes each ADP's accuracy per sampler timestep as a CSV at ``path`` and logs its range."""
    rows = [[step, t, *(f"{table[name][step]:.4f}" for name in table)] for step, t in enumerate(timesteps)]
    write_csv_atomically(path, ["step_index", "timestep", *table], rows)
    summary = ", ".join(f"{name} {min(values):.3f}..{max(values):.3f}" for name, values in table.items())
    rank_zero_info(f"ADP validation accuracy over timesteps: {summary} ({path})")
