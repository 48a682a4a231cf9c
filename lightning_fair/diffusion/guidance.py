"""Classifier-free guidance: two formulas, one batched UNet call."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lightning_fair.backbones.base import AdapterInputs, Condition, DiffusionBackbone, HEdit

GuidanceFormula = Literal["imagen", "one_plus_w"]


def combine_guidance(eps_condition: Tensor, eps_null: Tensor, scale: float, formula: GuidanceFormula) -> Tensor:
    """Classifier-free guided noise from the conditional and null predictions.

    ``imagen`` (Saharia et al.; diffusers' ``guidance_scale``): ``eps_null + w (eps_cond - eps_null)``, plain
    conditional at ``w = 1``. ``one_plus_w`` (Ho & Salimans): ``(1 + w) eps_cond - w eps_null``, plain conditional at
    ``w = 0``. The two agree when ``w_imagen = 1 + w``.
    """
    if formula == "imagen":
        return eps_null + scale * (eps_condition - eps_null)
    if formula == "one_plus_w":
        return (1 + scale) * eps_condition - scale * eps_null
    raise ValueError(f"Option 'cfg_formula' must be 'imagen' or 'one_plus_w', got {formula!r}")


def is_unguided(scale: float | None, formula: GuidanceFormula) -> bool:
    """Whether ``scale`` makes guidance plain conditional sampling (no null branch needed); ``None`` always does."""
    return scale is None or scale == (1.0 if formula == "imagen" else 0.0)


def guided_eps(
    backbone: DiffusionBackbone,
    x: Tensor,
    t: Tensor,
    condition: Condition,
    null_condition: Condition,
    scale: float | None,
    formula: GuidanceFormula = "imagen",
    h_edit: HEdit | None = None,
    adapter: AdapterInputs | None = None,
    null_adapter: AdapterInputs | None = None,
) -> Tensor:
    """Noise for ``condition`` with classifier-free guidance, conditional and null branches in one call.

    Without guidance (see :func:`is_unguided`) it is one call on the batch. Otherwise the batch is doubled as
    ``[conditional; null]``: ``h_edit`` then sees the h-space tensor of both halves (``2B`` rows), as the
    official Stable Diffusion code of Distribution Guidance edits both, and ``adapter``/``null_adapter`` are what a
    trainable module adds to each half (``null_adapter`` defaults to ``adapter``).
    """
    if is_unguided(scale, formula):
        return backbone.eps(x, t, condition, h_edit=h_edit, adapter=adapter)
    timesteps = torch.as_tensor(t, device=x.device)
    timesteps = torch.cat([timesteps, timesteps]) if timesteps.ndim else timesteps
    both = concat_adapters(adapter, null_adapter if null_adapter is not None else adapter)
    eps = backbone.eps(
        torch.cat([x, x]), timesteps, torch.cat([condition, null_condition]), h_edit=h_edit, adapter=both
    )
    eps_condition, eps_null = eps.chunk(2)
    return combine_guidance(eps_condition, eps_null, scale, formula)


def concat_adapters(first: AdapterInputs | None, second: AdapterInputs | None) -> AdapterInputs | None:
    """The adapter inputs of two batches, stacked as one (``None`` when neither has any)."""
    if first is None and second is None:
        return None
    first, second = first or AdapterInputs(), second or AdapterInputs()

    def cat(a: Tensor | None, b: Tensor | None) -> Tensor | None:
        if a is None and b is None:
            return None
        a = a if a is not None else torch.zeros_like(b)
        b = b if b is not None else torch.zeros_like(a)
        return torch.cat([a, b])

    down = None
    if first.down_residuals is not None or second.down_residuals is not None:
        pairs = zip(
            first.down_residuals or [None] * len(second.down_residuals),
            second.down_residuals or [None] * len(first.down_residuals),
            strict=True,
        )
        down = tuple(cat(a, b) for a, b in pairs)
    return AdapterInputs(
        time_embedding=cat(first.time_embedding, second.time_embedding),
        mid_residual=cat(first.mid_residual, second.mid_residual),
        down_residuals=down,
    )
