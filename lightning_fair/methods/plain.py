"""The reference samplers every comparison starts from: unguided and plainly conditional."""

from __future__ import annotations

from torch import Tensor

from lightning_fair.data.prompt_sets import batch_prompt
from lightning_fair.diffusion import SamplerConfig, SamplingState, Step
from lightning_fair.methods.base import DebiasingMethod
from lightning_fair.methods.conditions import Prompts
from lightning_fair.metrics import validate_distribution


class PlainSampling(DebiasingMethod):
    """The frozen model without intervention: the biased reference.

    Null label on a class-conditional model, the neutral prompt on a text-to-image model (with the sampler's
    classifier-free guidance, as Stable Diffusion is used), nothing on an unconditional one.
    """

    name = "plain"

    def guided_eps(self, x: Tensor, step: Step, state: SamplingState) -> Tensor:
        """The backbone's own prediction."""
        return self.unet_eps(x, step, state)


class ConditionalSampling(DebiasingMethod):
    """Conditions each sample on a class drawn from a target distribution.

    The natural baseline for a model conditioned on the sensitive attribute: its class labels, or on a
    text-to-image model one prompt per class (``prompts.classes``, e.g. ``["a photo of a woman",
    "a photo of a man"]``). Classifier-free guidance follows the sampler's ``cfg_scale`` (conditional and null
    branches in one batched UNet call).

    Args:
        backbone: a class-conditional or text-to-image diffusers folder or shipped model name.
        sampler: settings of the sampling loop.
        seed: seed of the run.
        prompts: the prompts of each class on a text-to-image backbone.
        target_distribution: probabilities of the conditioning classes (uniform by default).
    """

    name = "conditional"

    def __init__(
        self,
        backbone: str,
        sampler: SamplerConfig | None = None,
        seed: int = 0,
        prompts: Prompts | None = None,
        target_distribution: list[float] | None = None,
    ) -> None:
        super().__init__(backbone=backbone, sampler=sampler, seed=seed, prompts=prompts)
        self.require_classes(null=self.uses_cfg)
        self.target_distribution = validate_distribution(
            target_distribution, self.num_condition_classes, "target_distribution"
        )

    def evaluation_targets(self) -> dict[str, list[float]]:
        """``target_distribution`` of the conditioning attribute."""
        return {self.condition_attribute: self.target_distribution.tolist()}

    def init_state(self, indices: Tensor) -> SamplingState:
        """Draws each sample's class from the target distribution (``sampler.condition_draw``)."""
        labels = self.draw_classes(indices, self.target_distribution)
        condition = self.class_condition(labels, batch_prompt(indices))
        return SamplingState(indices=indices, condition=condition, conditions={self.condition_attribute: labels})

    def guided_eps(self, x: Tensor, step: Step, state: SamplingState) -> Tensor:
        """Conditional (optionally classifier-free guided) prediction."""
        return self.unet_eps(x, step, state)
