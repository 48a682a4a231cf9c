"""All diffusion math, once: the sampling loop, schedulers, classifier-free guidance, inversion, seeding."""

from lightning_fair.diffusion.noising import ddim_inversion, paired_chains
from lightning_fair.diffusion.sampler import DiffusionSampler, SamplerConfig, SamplingState, Step
from lightning_fair.diffusion.schedulers import make_scheduler, training_scheduler
from lightning_fair.diffusion.seeding import sample_generators

__all__ = [
    "DiffusionSampler",
    "SamplerConfig",
    "SamplingState",
    "Step",
    "ddim_inversion",
    "make_scheduler",
    "paired_chains",
    "sample_generators",
    "training_scheduler",
]
