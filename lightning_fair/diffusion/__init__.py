"""The one sampling loop shared by every method, its schedulers and per-sample seeding."""

from lightning_fair.diffusion.sampler import DiffusionSampler, SamplerConfig, SamplingState
from lightning_fair.diffusion.seeding import sample_generators

__all__ = ["DiffusionSampler", "SamplerConfig", "SamplingState", "sample_generators"]
