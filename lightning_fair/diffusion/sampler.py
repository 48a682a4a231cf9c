"""The sampling loop: a diffusers scheduler driven by a method's ``guided_eps`` hook."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_fair.diffusion.schedulers import make_scheduler
from lightning_fair.diffusion.seeding import NOISE_STREAM, per_sample_randn, sample_generators


@dataclass
class SamplerConfig:
    """Settings of the sampling loop.

    Attributes:
        scheduler: ``ddim`` (default; stochastic with ``eta > 0``) or ``ddpm`` (ancestral sampling).
        num_inference_steps: denoising steps.
        eta: DDIM noise weight (0 is deterministic DDIM, 1 matches DDPM's variance).
        clip_sample: clip the predicted clean image to [-1, 1] at each step (pixel models; latents never are).
        timestep_spacing: how the inference timesteps are picked from the training ones (diffusers'
            ``leading``, ``trailing`` or ``linspace``); ``trailing`` starts at the last training step.
        cfg_scale: classifier-free guidance scale of every conditional call; ``None`` (default) is no guidance (one
            UNet call), as are 1 with ``imagen`` and 0 with ``one_plus_w``. Stable Diffusion's usual value is 7.5
            (``imagen``).
        cfg_formula: ``imagen`` (``eps_null + w (eps_cond - eps_null)``, diffusers' convention) or ``one_plus_w``
            (``(1 + w) eps_cond - w eps_null``, Ho & Salimans).
        condition_draw: how a method draws each sample's class from a distribution: ``independent`` (each sample
            its own draw) or ``balanced`` (samples ``0..n-1`` hold each class ``n p`` times to within one, for every
            ``n``, any batching and any number of processes; sample ``i`` still depends only on the seed and ``i``).
    """

    scheduler: Literal["ddim", "ddpm"] = "ddim"
    num_inference_steps: int = 50
    eta: float = 0.0
    clip_sample: bool = True
    timestep_spacing: Literal["leading", "trailing", "linspace"] = "leading"
    cfg_scale: float | None = None
    cfg_formula: Literal["imagen", "one_plus_w"] = "imagen"
    condition_draw: Literal["independent", "balanced"] = "independent"

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
        if self.cfg_scale is not None and not self.cfg_scale >= 0:
            raise ValueError(f"Sampler option 'cfg_scale' must be non-negative, got {self.cfg_scale}")
        if self.cfg_formula not in ("imagen", "one_plus_w"):
            raise ValueError(f"Sampler option 'cfg_formula' must be 'imagen' or 'one_plus_w', got {self.cfg_formula!r}")
        if self.condition_draw not in ("independent", "balanced"):
            raise ValueError(
                f"Sampler option 'condition_draw' must be 'independent' or 'balanced', got {self.condition_draw!r}"
            )


@dataclass(frozen=True)
class Step:
    """Where the loop is: handed to the method at every denoising step.

    Attributes:
        index: index of the step (0 is the noisiest).
        timestep: the training timestep of the step (a scalar tensor on the sampling device).
        num_steps: number of denoising steps of the loop.
    """

    index: int
    timestep: Tensor
    num_steps: int


@dataclass
class SamplingState:
    """What a method knows about the batch being generated (methods with more to keep subclass it).

    Attributes:
        indices: global index of each sample in the run.
        condition: what the backbone is given for each sample (class labels or prompt embeddings; ``None`` for an
            unconditional model).
        null_condition: the backbone's null condition for the batch, when classifier-free guidance needs it.
        conditions: per-sample conditions to report with the images (e.g. ``{"Male": tensor}``).
    """

    indices: Tensor
    condition: Tensor | None = None
    null_condition: Tensor | None = None
    conditions: dict[str, Tensor] = field(default_factory=dict)


EpsFunction = Callable[[Tensor, Step, SamplingState], Tensor]


class DiffusionSampler:
    """Runs the reverse process with per-sample seeds: sample ``i`` depends only on ``(seed, i)``.

    Args:
        scheduler_config: the backbone's noise-schedule config (betas, number of training steps).
        config: sampler settings.
        clip_sample: whether the predicted clean sample may be clipped (``False`` for latents, whatever
            ``config.clip_sample`` says).
    """

    def __init__(self, scheduler_config: dict[str, Any], config: SamplerConfig, clip_sample: bool = True) -> None:
        self.config = config
        self.scheduler = make_scheduler(
            scheduler_config,
            config.scheduler,
            config.num_inference_steps,
            clip_sample=config.clip_sample and clip_sample,
            timestep_spacing=config.timestep_spacing,
        )

    @property
    def timesteps(self) -> Tensor:
        """The timesteps of the reverse process, noisiest first."""
        return self.scheduler.timesteps

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The forward process: ``x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise`` at timesteps ``t`` (``(B,)``)."""
        return self.scheduler.add_noise(x0, noise, t)

    @torch.no_grad()
    def sample(
        self,
        eps_function: EpsFunction,
        state: SamplingState,
        seed: int,
        shape: tuple[int, ...],
        device: torch.device,
    ) -> Tensor:
        """Denoises per-sample seeded noise; returns ``x_0`` in the model's space (images or latents).

        Args:
            eps_function: the method's noise prediction ``(x_t, step, state) -> eps``; it may enable gradients.
            state: the batch's state (indices, conditions).
            seed: the run's seed.
            shape: ``(C, H, W)`` of what the model denoises.
            device: where to run.
        """
        generators = sample_generators(seed, state.indices, NOISE_STREAM)
        x = per_sample_randn(generators, shape, device)
        step_options: dict[str, Any] = {"generator": generators}
        if self.config.scheduler == "ddim":
            step_options["eta"] = self.config.eta
        num_steps = len(self.timesteps)
        for index, timestep in enumerate(self.timesteps):
            eps = eps_function(x, Step(index, timestep.to(device), num_steps), state)
            x = self.scheduler.step(eps, timestep, x, **step_options).prev_sample
        return x
