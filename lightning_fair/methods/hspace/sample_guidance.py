"""Per-sample h-space guidance, the baseline of Parihar et al. (2024): each sample toward its own drawn class."""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from lightning_fair.data.prompt_sets import batch_prompt
from lightning_fair.diffusion import SamplingState, sample_generators
from lightning_fair.diffusion.seeding import CONDITION_STREAM, per_sample_choice
from lightning_fair.methods.hspace.guidance import HSpaceGuidance


class HSpaceSampleGuidance(HSpaceGuidance):
    """Per-sample h-space guidance, the baseline of Parihar et al. (2024): each sample toward its own class.

    Each sample draws a class of every guided attribute from the target distribution (per-sample seeded), and
    h moves up the ADP's tempered probability of that class: attribute ``a`` has the loss
    ``-sum_i softmax(ADP_t(h_i) / T)[c_i]``, weighted by its scale.
    Samples do not interact, so the result does not depend on the batch.
    """

    name = "h_sample_guidance"

    def init_state(self, indices: Tensor) -> SamplingState:
        """Draws each sample's class of every guided attribute from its target distribution."""
        if self.sampler.config.condition_draw == "balanced":  # the joint classes, balanced over the product
            names = list(self.targets)
            joint = functools.reduce(
                lambda a, b: torch.outer(a, b).flatten(), [self.targets[name].double() for name in names]
            )
            cells = self.draw_classes(indices, joint)
            classes = torch.unravel_index(cells, tuple(len(self.targets[name]) for name in names))
            conditions = dict(zip(names, classes, strict=True))
        else:
            generators = sample_generators(self.seed, indices, CONDITION_STREAM)
            conditions = {
                name: per_sample_choice(generators, target).to(self.device) for name, target in self.targets.items()
            }
        return SamplingState(
            indices=indices,
            condition=self.neutral_condition(len(indices), batch_prompt(indices)),
            conditions=conditions,
        )

    def guidance_losses(self, h: Tensor, t: Tensor, state: SamplingState) -> dict[str, Tensor]:
        """Minus the probability of each sample's assigned class, summed over samples, per attribute."""
        losses = {}
        repeats = len(h) // len(state.indices)  # 2 under classifier-free guidance: both halves move
        for name, probabilities in self.probabilities(h, t).items():
            classes = state.conditions[name].repeat(repeats).view(-1, 1)  # a normal tensor under inference mode
            losses[name] = -probabilities.gather(1, classes).sum()
        return losses
