"""The diffusers schedulers the framework uses, built in one place from a model's noise-schedule config."""

from __future__ import annotations

from typing import Any, Literal

from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

SchedulerKind = Literal["ddim", "ddpm"]


def make_scheduler(
    scheduler_config: dict[str, Any],
    kind: SchedulerKind = "ddim",
    num_inference_steps: int | None = None,
    clip_sample: bool = False,
    timestep_spacing: str = "leading",
) -> SchedulerMixin:
    """A ``DDIMScheduler`` or ``DDPMScheduler`` over the model's schedule, with its inference timesteps set.

    It always steps on predicted noise: backbones turn ``v_prediction`` and ``sample`` outputs into eps.

    Args:
        scheduler_config: the model's noise-schedule config (betas, number of training steps, prediction type).
        kind: ``ddim`` or ``ddpm``.
        num_inference_steps: denoising steps (``None``: leave the timesteps unset, e.g. for training).
        clip_sample: clip the predicted clean sample to [-1, 1] at each step (pixel models only).
        timestep_spacing: diffusers' ``leading``, ``trailing`` or ``linspace``.
    """
    scheduler_class = DDIMScheduler if kind == "ddim" else DDPMScheduler
    scheduler = scheduler_class.from_config(
        scheduler_config, clip_sample=clip_sample, timestep_spacing=timestep_spacing, prediction_type="epsilon"
    )
    if num_inference_steps is not None:
        scheduler.set_timesteps(num_inference_steps)
    return scheduler


def training_scheduler(num_train_timesteps: int = 1000, beta_schedule: str = "linear", **options: Any) -> DDPMScheduler:
    """The ``DDPMScheduler`` a model is trained with (forward noising) and exported beside it."""
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, **options)


def sampling_scheduler(**schedule: Any) -> DDIMScheduler:
    """The ``DDIMScheduler`` exported with a text-to-image model (Stable Diffusion 1.x's settings by default)."""
    settings = {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}
    return DDIMScheduler(**{**settings, **schedule})


def pipeline_entry(scheduler: SchedulerMixin) -> list[str]:
    """The ``model_index.json`` entry of ``scheduler`` (library and class name)."""
    return ["diffusers", type(scheduler).__name__]
