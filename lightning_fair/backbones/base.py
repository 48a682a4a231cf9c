"""The contract every debiasing method sees: a frozen pretrained diffusion model, pixel or latent."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from diffusers import DDPMScheduler
from torch import Tensor, nn

Conditioning = Literal["class", "text", "none"]
Condition = Tensor | None  # class labels (B,), text embeddings (B, L, D), or None for an unconditional model
HEdit = Callable[[Tensor], Tensor]


@dataclass
class AdapterInputs:
    """What a trainable module adds to one call of the frozen UNet (all optional, batch-first).

    Attributes:
        time_embedding: added to the UNet's time embedding (``(B, D)``, D the embedding width), before the
            class embedding is added: the way a cluster or attribute embedding joins a frozen model.
        mid_residual: added to the mid-block output (the h-space tensor).
        down_residuals: added to the skip connections of the down blocks (diffusers'
            ``down_block_additional_residuals``, as ControlNet does); latent text-to-image UNets only.
    """

    time_embedding: Tensor | None = None
    mid_residual: Tensor | None = None
    down_residuals: tuple[Tensor, ...] | None = None


class _StopAtH(Exception):
    """Raised by the mid-block hook to end a UNet call once h is known."""

    def __init__(self, h: Tensor) -> None:
        super().__init__()
        self.h = h


class DiffusionBackbone(nn.Module, ABC):
    """A pretrained diffusers model, frozen: requires no gradient, stays in eval mode, never enters a checkpoint.

    Every method works through this contract, so a method written once runs on pixel DDPMs and on latent
    text-to-image models alike. An implementation provides the UNet (``self.unet``), the noise schedule, the
    conditions it understands and how to turn what it denoises into images. The base takes the h-space tensor
    (the output of ``unet.mid_block``, the bottleneck of Asyrp and Distribution Guidance) and lets a trainable
    module join the call through forward hooks on ``mid_block`` and ``time_embedding``, so that the UNet's own
    ``forward`` runs unchanged for every diffusers UNet.

    Attributes:
        reference: how the model was named (a folder or a shipped model name): what checkpoints store.
        conditioning: ``class`` (class labels, with ``null_label`` for classifier-free guidance), ``text``
            (prompt embeddings, the empty prompt as null condition) or ``none``.
        scheduler_config: the diffusers noise-schedule config the model was trained with.
        center_crop_fraction: the view of the training images (side of their centred square crop as a fraction of
            the source's shorter side), ``None`` when the model does not record it.
    """

    reference: str
    conditioning: Conditioning
    scheduler_config: dict[str, Any]
    center_crop_fraction: float | None
    unet: nn.Module

    def __init__(self, reference: str) -> None:
        super().__init__()
        self.reference = reference
        self._mid_block_action: HEdit | None = None
        self._time_embedding_addition: Tensor | None = None

    def _finish_setup(self) -> None:
        """Freezes the modules and installs the hooks; implementations call it at the end of ``__init__``."""
        if getattr(self.unet, "mid_block", None) is None:
            raise ValueError(f"'{self.reference}': the UNet has no mid block, so it has no h-space")
        self.unet.mid_block.register_forward_hook(self._mid_block_hook)
        self.unet.time_embedding.register_forward_hook(self._time_embedding_hook)
        alphas = torch.as_tensor(self._scheduler_alphas_cumprod(), dtype=torch.float64)
        self.register_buffer("alphas_cumprod", alphas, persistent=False)
        self.requires_grad_(False)
        self.eval()

    def _scheduler_alphas_cumprod(self) -> Tensor:
        return DDPMScheduler.from_config(self.scheduler_config).alphas_cumprod

    def train(self, mode: bool = True) -> DiffusionBackbone:
        """Stays in eval mode whatever is asked (a frozen backbone never updates norm statistics)."""
        return super().train(False)

    # ------------------------------------------------------------------------------------------------ shapes

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of what the UNet denoises (images for pixel models, latents otherwise)."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return self.unet.config.in_channels, height, width

    @property
    @abstractmethod
    def image_shape(self) -> tuple[int, int, int]:
        """Shape ``(C, H, W)`` of the images the model generates."""

    @property
    def is_latent(self) -> bool:
        """Whether the model denoises latents (decoded to images after the loop) rather than pixels."""
        return False

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the UNet computes in."""
        return next(self.unet.parameters()).dtype

    def decode(self, x: Tensor) -> Tensor:
        """Images in [-1, 1] from what the UNet denoises (identity for pixel models)."""
        return x.clamp(-1, 1)

    def encode(self, images: Tensor) -> Tensor:
        """What the UNet denoises from images in [-1, 1] (identity for pixel models)."""
        return images

    def use_precision_for(self, device: torch.device) -> None:
        """Chooses the UNet's precision for ``device`` (float32 unless an implementation says otherwise)."""

    # -------------------------------------------------------------------------------------------- conditions

    @abstractmethod
    def null_condition(self, batch_size: int, device: torch.device | str) -> Condition:
        """The null condition of classifier-free guidance (null label, empty prompt, or ``None``)."""

    def class_condition(self, labels: Tensor) -> Condition:
        """The condition of class labels (class-conditional models only)."""
        raise ValueError(self.describe_conditioning("class labels"))

    def prompt_condition(self, prompts: list[str]) -> Condition:
        """The condition of text prompts (text-conditional models only)."""
        raise ValueError(self.describe_conditioning("text prompts"))

    def describe_conditioning(self, needed: str) -> str:
        """An error line: ``needed`` is not what this backbone takes, and what it does take."""
        has = {"class": "class labels", "text": "text prompts", "none": "no condition (unconditional)"}
        return f"This needs a backbone conditioned on {needed}; '{self.reference}' takes {has[self.conditioning]}"

    # ---------------------------------------------------------------------------------------------- the call

    @abstractmethod
    def _unet_output(
        self,
        x: Tensor,
        t: Tensor,
        condition: Condition,
        down_residuals: tuple[Tensor, ...] | None,
        unet: nn.Module | None = None,
    ) -> Tensor:
        """The raw output of ``unet`` (default: the backbone's) for ``(x, t, condition)`` (``t`` of shape ``(B,)``)."""

    # ------------------------------------------------------------------------------------ companion UNets

    def companion_unet(
        self, block_out_channels: tuple[int, ...] | None = None, copy_weights: bool = False
    ) -> nn.Module:
        """A new trainable UNet of the backbone's kind that takes the same inputs (e.g. InvDiff's delta).

        Same class and config as the frozen UNet (conditioning, levels, attention), with ``block_out_channels`` in
        place of its widths (and each ``attention_head_dim`` reduced to its greatest common divisor with the level's
        width, so that attention still splits the channels evenly); float32, in train mode, with gradients.
        ``copy_weights`` starts it from the frozen weights (same widths only).

        Raises:
            ValueError: widths of another number of levels than the frozen UNet's, widths the group norm does not
                divide, or ``copy_weights`` with other widths.
        """
        config = dict(self.unet.config)
        widths = tuple(config["block_out_channels"])
        if block_out_channels is not None:
            block_out_channels = tuple(int(width) for width in block_out_channels)
            if len(block_out_channels) != len(widths):
                raise ValueError(
                    f"Option 'delta_channels' must give one width per level of the frozen UNet of "
                    f"'{self.reference}' ({len(widths)}: {list(widths)}), got {list(block_out_channels)}"
                )
            groups = config.get("norm_num_groups") or 1
            if any(width % groups for width in block_out_channels):
                raise ValueError(
                    f"Option 'delta_channels' ({list(block_out_channels)}) must be multiples of the frozen UNet's "
                    f"norm_num_groups ({groups})"
                )
            if copy_weights and block_out_channels != widths:
                raise ValueError(
                    f"Option 'init_from_backbone' copies the frozen UNet, so 'delta_channels' must be its widths "
                    f"{list(widths)} (or null), got {list(block_out_channels)}"
                )
            config["block_out_channels"] = list(block_out_channels)
            config["attention_head_dim"] = _attention_sizes(config.get("attention_head_dim"), block_out_channels)
        unet = type(self.unet).from_config(config)
        if copy_weights:
            unet.load_state_dict(self.unet.state_dict())
        return unet.float().requires_grad_(True).train()

    def companion_output(self, unet: nn.Module, x: Tensor, t: Tensor | int, condition: Condition) -> Tensor:
        """The raw output of a :meth:`companion_unet` for the inputs the backbone's UNet takes, in ``x``'s dtype."""
        timesteps = self._batch_timesteps(t, x)
        dtype = next(unet.parameters()).dtype
        return self._unet_output(x.to(dtype), timesteps, condition, None, unet=unet).to(x.dtype)

    def eps(
        self,
        x: Tensor,
        t: Tensor | int,
        condition: Condition = None,
        h_edit: HEdit | None = None,
        adapter: AdapterInputs | None = None,
    ) -> Tensor:
        """Predicted noise for ``(x_t, t, condition)``, in one UNet call.

        Args:
            x: what is denoised, ``(B, *sample_shape)``.
            t: timestep, a scalar or ``(B,)``.
            condition: from :meth:`class_condition`, :meth:`prompt_condition` or :meth:`null_condition`.
            h_edit: replaces the h-space tensor (mid-block output) by ``h_edit(h)`` inside the call.
            adapter: what a trainable module adds to the call (see :class:`AdapterInputs`).
        """
        timesteps = self._batch_timesteps(t, x)
        adapter = adapter or AdapterInputs()
        mid_residual = adapter.mid_residual

        def mid_block(h: Tensor) -> Tensor:
            if mid_residual is not None:
                h = h + mid_residual.to(h.dtype)
            return h if h_edit is None else h_edit(h).to(h.dtype)

        needs_hook = h_edit is not None or mid_residual is not None
        with self._hooks(mid_block if needs_hook else None, adapter.time_embedding):
            output = self._unet_output(x.to(self.dtype), timesteps, condition, adapter.down_residuals)
        return self._as_eps(output.to(x.dtype), x, timesteps)

    def h(self, x: Tensor, t: Tensor | int, condition: Condition = None) -> Tensor:
        """The h-space tensor (mid-block output) of the call ``(x, t, condition)``; the UNet stops there."""

        def stop(h: Tensor) -> Tensor:
            raise _StopAtH(h)

        timesteps = self._batch_timesteps(t, x)
        with self._hooks(stop, None):
            try:
                self._unet_output(x.to(self.dtype), timesteps, condition, None)
            except _StopAtH as stopped:
                return stopped.h.to(x.dtype)
        raise RuntimeError(f"'{self.reference}': the UNet call never reached its mid block")

    def forward(self, x: Tensor, t: Tensor | int, condition: Condition = None) -> Tensor:
        """Same as :meth:`eps` without hooks."""
        return self.eps(x, t, condition)

    def _batch_timesteps(self, t: Tensor | int, x: Tensor) -> Tensor:
        timesteps = torch.as_tensor(t, device=x.device)
        return timesteps.expand(x.shape[0]) if timesteps.ndim == 0 else timesteps

    def _as_eps(self, output: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """The model output as predicted noise (``epsilon``, ``v_prediction`` and ``sample`` models alike)."""
        kind = self.scheduler_config.get("prediction_type", "epsilon")
        if kind == "epsilon":
            return output
        alpha = self.alphas_cumprod.to(x.device)[t.long()].to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
        if kind == "v_prediction":
            return alpha.sqrt() * output + (1 - alpha).sqrt() * x
        if kind == "sample":
            return (x - alpha.sqrt() * output) / (1 - alpha).sqrt()
        raise ValueError(f"'{self.reference}': unknown prediction_type {kind!r} in its scheduler config")

    @contextmanager
    def _hooks(self, mid_block: HEdit | None, time_embedding: Tensor | None) -> Iterator[None]:
        self._mid_block_action, self._time_embedding_addition = mid_block, time_embedding
        try:
            yield
        finally:
            self._mid_block_action, self._time_embedding_addition = None, None

    def _mid_block_hook(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        action = self._mid_block_action
        if action is None:
            return None
        if isinstance(output, tuple):  # some mid blocks return (hidden, ...)
            return (action(output[0]), *output[1:])
        return action(output)

    def _time_embedding_hook(self, module: nn.Module, inputs: Any, output: Tensor) -> Tensor | None:
        addition = self._time_embedding_addition
        return None if addition is None else output + addition.to(output.dtype)


def _attention_sizes(sizes: int | list[int] | None, widths: tuple[int, ...]) -> int | list[int] | None:
    """``attention_head_dim`` (one value or one per level) made to divide the given level widths."""
    if sizes is None:
        return None
    if isinstance(sizes, int):
        return math.gcd(sizes, *widths)
    return [math.gcd(size, width) for size, width in zip(sizes, widths, strict=True)]
