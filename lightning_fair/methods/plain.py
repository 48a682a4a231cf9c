"""The reference samplers every comparison starts from: unguided and plainly conditional."""

from __future__ import annotations

from torch import Tensor

from lightning_fair.diffusion import SamplerConfig, SamplingState
from lightning_fair.diffusion.seeding import CONDITION_STREAM, per_sample_choice, sample_generators
from lightning_fair.methods.base import DebiasingMethod
from lightning_fair.metrics import validate_distribution


class PlainSampling(DebiasingMethod):
    """The frozen model without intervention (null label on a conditional model): the biased reference."""

    name = "plain"

    def guided_eps(self, x: Tensor, t: Tensor, state: SamplingState) -> Tensor:
        """The backbone's own prediction."""
        return self.backbone(x, t, state.class_labels)


class ConditionalSampling(DebiasingMethod):
    """Conditions each sample on a class of the backbone's attribute drawn from a target distribution.

    The natural baseline for a model conditioned on the sensitive attribute. With ``guidance_scale != 1``
    it applies classifier-free guidance (conditional and null branches in one batched UNet call).

    Args:
        backbone: a class-conditional diffusers folder or shipped model name.
        sampler: settings of the sampling loop.
        seed: seed of the run.
        target_distribution: probabilities of the conditioning classes (uniform by default).
        guidance_scale: classifier-free guidance scale (1 is plain conditional sampling).
    """

    name = "conditional"

    def __init__(
        self,
        backbone: str,
        sampler: SamplerConfig | None = None,
        seed: int = 0,
        target_distribution: list[float] | None = None,
        guidance_scale: float = 1.0,
    ) -> None:
        if not guidance_scale >= 0:
            raise ValueError(f"Option 'guidance_scale' must be non-negative, got {guidance_scale}")
        super().__init__(backbone=backbone, sampler=sampler, seed=seed)
        self.backbone.require_conditioning(type(self).__name__, null_label=guidance_scale != 1.0)
        self.target_distribution = validate_distribution(
            target_distribution, self.backbone.num_classes, "target_distribution"
        )
        self.guidance_scale = guidance_scale

    def init_state(self, indices: Tensor) -> SamplingState:
        """Draws each sample's class from the target distribution with its own generator."""
        labels = per_sample_choice(sample_generators(self.seed, indices, CONDITION_STREAM), self.target_distribution)
        labels = labels.to(self.device)
        attribute = self.backbone.condition_attribute or "condition"
        return SamplingState(indices=indices, class_labels=labels, conditions={attribute: labels})

    def guided_eps(self, x: Tensor, t: Tensor, state: SamplingState) -> Tensor:
        """Conditional (optionally classifier-free guided) prediction."""
        return self.backbone.classifier_free_eps(x, t, state.class_labels, self.guidance_scale)
