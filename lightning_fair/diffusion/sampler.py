"""The sampling loop: a diffusers scheduler driven by a method's ``guided_eps`` hook."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import Tensor

from lightning_fair.diffusion.seeding import NOISE_STREAM, per_sample_randn, sample_generators


@dataclass
class SamplerConfig:
    """Settings of the sampling loop.

    Attributes:
        scheduler: ``ddim`` (default; stochastic with ``eta > 0``) or ``ddpm`` (ancestral sampling).
        num_inference_steps: denoising steps.
        eta: DDIM noise weight (0 is deterministic DDIM, 1 matches DDPM's variance).
        clip_sample: clip the predicted clean image to [-1, 1] at each step.
        timestep_spacing: how the inference timesteps are picked from the training ones (diffusers'
            ``leading``, ``trailing`` or ``linspace``); ``trailing`` starts at the last training step.
    """

    scheduler: Literal["ddim", "ddpm"] = "ddim"
    num_inference_steps: int = 50
    eta: float = 0.0
    clip_sample: bool = True
    timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading"

    def __post_init__(self) -> None:
        if self.scheduler not in ("ddim", "ddpm"):
            raise ValueError(f"Sampler option 'scheduler' must be 'ddim' or 'ddpm', got {self.scheduler!r}")
        if self.num_inference_steps < 1:
            raise ValueError(f"Sampler option 'num_inference_steps' must be positive, got {self.num_inference_steps}")
        if self.eta < 0:
            raise ValueError(f"Sampler option 'eta' must be non-negative, got {self.eta}")
        if self.timestep_spacing not in ("leading", "trailing", "linspace"):
            raise ValueError(
                "Sampler option 'timestep_spacing' must be 'leading', 'trailing' or 'linspace', "
                f"got {self.timestep_spacing!r}"
            )


@dataclass
class SamplingState:
    """What a method knows about the batch being generated.

    Attributes:
        indices: global index of each sample in the run.
        class_labels: the condition given to the backbone for each sample (``None`` for unconditional).
        conditions: per-sample conditions to report with the images (e.g. ``{"Male": tensor}``).
        step_index: index of the current denoising step (0 is the noisiest).
        num_steps: number of denoising steps.
        extras: anything else a method keeps between steps.
    """

    indices: Tensor
    class_labels: Tensor | None = None
    conditions: dict[str, Tensor] = field(default_factory=dict)
    step_index: int = 0
    num_steps: int = 0
    extras: dict[str, Any] = field(default_factory=dict)


EpsFunction = Callable[[Tensor, Tensor, SamplingState], Tensor]


class DiffusionSampler:
    """Runs the reverse process with per-sample seeds: sample ``i`` depends only on ``(seed, i)``.

    Args:
        scheduler_config: the backbone's noise-schedule config (betas, number of training steps).
        config: sampler settings.
    """

    def __init__(self, scheduler_config: dict[str, Any], config: SamplerConfig) -> None:
        self.config = config
        scheduler_class = DDIMScheduler if config.scheduler == "ddim" else DDPMScheduler
        self.scheduler = scheduler_class.from_config(
            scheduler_config, clip_sample=config.clip_sample, timestep_spacing=config.timestep_spacing
        )
        self.scheduler.set_timesteps(config.num_inference_steps)

    @property
    def timesteps(self) -> Tensor:
        """The timesteps of the reverse process, noisiest first."""
        return self.scheduler.timesteps

    @torch.no_grad()
    def sample(
        self,
        eps_function: EpsFunction,
        state: SamplingState,
        seed: int,
        image_shape: tuple[int, ...],
        device: torch.device,
    ) -> Tensor:
        """Generates images in [-1, 1] for the samples of ``state``.

        Args:
            eps_function: the method's noise prediction ``(x_t, t, state) -> eps``; it may enable gradients.
            state: the batch's state (indices, conditions); ``step_index`` is advanced here.
            seed: the run's seed.
            image_shape: ``(C, H, W)``.
            device: where to run.
        """
        generators = sample_generators(seed, state.indices, NOISE_STREAM)
        x = per_sample_randn(generators, image_shape, device)
        state.num_steps = len(self.timesteps)
        step_options: dict[str, Any] = {"generator": generators}
        if self.config.scheduler == "ddim":
            step_options["eta"] = self.config.eta
        for step_index, timestep in enumerate(self.timesteps):
            state.step_index = step_index
            t = timestep.to(device)
            eps = eps_function(x, t, state)
            x = self.scheduler.step(eps, timestep, x, **step_options).prev_sample
        return x.clamp(-1, 1)
