"""Fair Diffusion (Friedrich et al., 2023): semantic guidance (SEGA) toward a drawn class, away from the others."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_fair.backbones import Condition
from lightning_fair.data.prompt_sets import batch_prompt
from lightning_fair.diffusion import SamplerConfig, SamplingState, Step
from lightning_fair.diffusion.guidance import combine_guidance
from lightning_fair.methods.base import DebiasingMethod
from lightning_fair.methods.conditions import Prompts
from lightning_fair.metrics import validate_distribution


@dataclass
class SemanticGuidanceState(SamplingState):
    """The sampling state of Fair Diffusion: the edit prompts' conditions, each sample's sign per edit, momentum.

    Attributes:
        edit_conditions: the condition of each class's edit prompt for the batch, ``(K * B, ...)`` class-major.
        edit_signs: ``(K, B)``: +1 toward the edit of the sample's drawn class, -1 away from every other class's.
        momentum: the semantic guidance's running momentum (``None`` before the first step).
    """

    edit_conditions: Tensor | None = None
    edit_signs: Tensor | None = None
    momentum: Tensor | None = None


def semantic_guidance(edit_eps: Tensor, null_eps: Tensor, signs: Tensor, scale: float, threshold: float) -> Tensor:
    """SEGA's summed edit term: each edit's scaled, signed ``eps_edit - eps_null`` kept where it is largest.

    Args:
        edit_eps: ``(K, B, C, H, W)``, the noise under each edit prompt.
        null_eps: ``(B, C, H, W)``, the noise under the null (or negative) prompt.
        signs: ``(K, B)``: the direction of each edit for each sample.
        scale: the edit guidance scale.
        threshold: the quantile (per sample and channel, over positions) of ``|term|`` under which it is zeroed.

    Returns:
        ``(B, C, H, W)``: the sum over edits.
    """
    terms = scale * signs[:, :, None, None, None] * (edit_eps - null_eps.unsqueeze(0))
    flat = terms.flatten(start_dim=3)
    cutoff = last_axis_quantile(flat.abs().float(), threshold).to(terms.dtype)
    kept = torch.where(flat.abs() >= cutoff.unsqueeze(-1), flat, 0.0)
    return kept.view_as(terms).sum(dim=0)


def last_axis_quantile(values: Tensor, quantile: float) -> Tensor:
    """``torch.quantile(values, quantile, dim=-1)`` (linear interpolation) without its limit on the input's size."""
    position = quantile * (values.shape[-1] - 1)
    low = math.floor(position)
    ordered = values.sort(dim=-1).values
    lower, upper = ordered[..., low], ordered[..., math.ceil(position)]
    return lower + (upper - lower) * (position - low)


class FairDiffusion(DebiasingMethod):
    """Fair Diffusion (Friedrich et al., 2023): semantic guidance (SEGA, Brack et al., 2023) of a text-to-image model.

    Each sample draws a class of the sensitive attribute from ``target_distribution`` and is guided toward its edit
    prompt and away from every other class's (``edit_prompts``, one per class in the classifier's class order: the
    paper's "female person" / "male person" for CelebA's ``Male``). At every step one batched UNet call gives the
    noise under the null (or negative) prompt, the sample's prompt and each edit prompt; each edit's term
    ``edit_guidance_scale * sign * (eps_edit - eps_null)`` keeps, per sample and latent channel, only its values at or
    above the ``edit_threshold`` quantile of their magnitude; the sum ``E`` gets ``edit_momentum_scale`` times the
    running momentum, the momentum becomes ``edit_mom_beta * M + (1 - edit_mom_beta) * E``, and ``E`` is added to
    the classifier-free guided noise from step ``edit_warmup_steps`` on (the momentum builds during the warm-up),
    as diffusers' ``SemanticStableDiffusionPipeline`` does. Training-free. The null prediction is computed whatever
    the sampler's ``cfg_scale`` (at 1 it serves the edits only; diffusers' pipeline edits only above 1). Defaults are
    the paper's generation script's (scale 4, warm-up 5, threshold 0.95, momentum 0.5, beta 0.6); the paper samples
    with Stable Diffusion's default PNDM scheduler and 7 for classifier-free guidance, here the setup's sampler.

    Args:
        backbone: a text-to-image diffusers folder or shipped model name.
        sampler: settings of the sampling loop.
        seed: seed of the run.
        prompts: the neutral prompt(s) and, as ``attribute``, the sensitive attribute the edits name.
        edit_prompts: one edit prompt per class of ``prompts.attribute`` (``None``: ``prompts.classes``, templates over
            each neutral prompt).
        target_distribution: distribution of the drawn classes (uniform by default).
        edit_guidance_scale: strength of each edit term.
        edit_warmup_steps: steps before the edit terms are added.
        edit_threshold: quantile of an edit term's magnitude under which it is zeroed.
        edit_momentum_scale: weight of the momentum added to the edit terms.
        edit_mom_beta: the momentum's decay.
    """

    name = "fair_diffusion"
    conditionings = ("text",)

    def __init__(
        self,
        backbone: str,
        sampler: SamplerConfig | None = None,
        seed: int = 0,
        prompts: Prompts | None = None,
        edit_prompts: list[str] | None = None,
        target_distribution: list[float] | None = None,
        edit_guidance_scale: float = 4.0,
        edit_warmup_steps: int = 5,
        edit_threshold: float = 0.95,
        edit_momentum_scale: float = 0.5,
        edit_mom_beta: float = 0.6,
    ) -> None:
        super().__init__(backbone=backbone, sampler=sampler, seed=seed, prompts=prompts)
        if self.backbone.conditioning not in self.conditionings:
            raise ValueError(
                f"FairDiffusion guides a text-to-image backbone with edit prompts; '{self.backbone.reference}' is "
                f"{'class-conditional' if self.backbone.conditioning == 'class' else 'unconditional'}"
            )
        if edit_prompts is not None and len(edit_prompts) < 2:
            raise ValueError(f"Option 'edit_prompts' must give one prompt per class (at least 2), got {edit_prompts}")
        self.num_edit_classes = len(edit_prompts) if edit_prompts is not None else self.num_condition_classes
        if not 0.0 <= edit_threshold < 1.0:
            raise ValueError(f"Option 'edit_threshold' must lie in [0, 1), got {edit_threshold}")
        if not 0.0 <= edit_mom_beta < 1.0:
            raise ValueError(f"Option 'edit_mom_beta' must lie in [0, 1), got {edit_mom_beta}")
        steps = self.sampler.config.num_inference_steps
        if not 0 <= edit_warmup_steps < steps:
            raise ValueError(
                f"Option 'edit_warmup_steps' must lie in 0..{steps - 1} (the sampler's num_inference_steps is {steps}: "
                f"a later first step edits nothing), got {edit_warmup_steps}"
            )
        if edit_guidance_scale < 0 or edit_momentum_scale < 0:
            raise ValueError(
                "Options 'edit_guidance_scale' and 'edit_momentum_scale' must be non-negative, got "
                f"{edit_guidance_scale} and {edit_momentum_scale}"
            )
        self.edit_prompts = edit_prompts
        self.target_distribution = validate_distribution(
            target_distribution, self.num_edit_classes, "target_distribution"
        )
        self.edit_guidance_scale = edit_guidance_scale
        self.edit_warmup_steps = edit_warmup_steps
        self.edit_threshold = edit_threshold
        self.edit_momentum_scale = edit_momentum_scale
        self.edit_mom_beta = edit_mom_beta

    def evaluation_targets(self) -> dict[str, list[float]]:
        """``target_distribution`` of the edited attribute."""
        return {self.condition_attribute: self.target_distribution.tolist()}

    def edit_condition(self, label: int, batch_size: int, prompt: int) -> Condition:
        """The condition of class ``label``'s edit prompt for a batch of neutral prompt ``prompt``."""
        if self.edit_prompts is None:
            labels = torch.full((batch_size,), label, dtype=torch.long, device=self.device)
            return self.class_condition(labels, prompt)
        return self.backbone.prompt_condition([self.edit_prompts[label]] * batch_size).to(self.device)

    def init_state(self, indices: Tensor) -> SemanticGuidanceState:
        """Draws each sample's class; the neutral prompt's condition, every class's edit condition and signs."""
        labels = self.draw_classes(indices, self.target_distribution)
        prompt = batch_prompt(indices)
        classes = torch.arange(self.num_edit_classes, device=self.device)
        signs = torch.where(classes[:, None] == labels[None, :], 1.0, -1.0)
        edits = [self.edit_condition(label, len(indices), prompt) for label in range(self.num_edit_classes)]
        return SemanticGuidanceState(
            indices=indices,
            condition=self.neutral_condition(len(indices), prompt),
            null_condition=self.null_condition(len(indices)),
            conditions={self.condition_attribute: labels},
            edit_conditions=torch.cat(edits),
            edit_signs=signs,
        )

    def guided_eps(self, x: Tensor, step: Step, state: SemanticGuidanceState) -> Tensor:
        """Classifier-free guided noise plus the semantic guidance, from one batched UNet call of ``2 + K`` parts."""
        config, classes = self.sampler.config, self.num_edit_classes
        conditions = torch.cat([state.condition, state.null_condition, state.edit_conditions])
        eps = self.backbone.eps(x.repeat(2 + classes, *([1] * (x.ndim - 1))), step.timestep, conditions)
        prompt_eps, null_eps, *edit_eps = eps.chunk(2 + classes)
        edit = semantic_guidance(
            torch.stack(edit_eps),
            null_eps,
            state.edit_signs.to(eps.dtype),
            self.edit_guidance_scale,
            self.edit_threshold,
        )
        momentum = torch.zeros_like(edit) if state.momentum is None else state.momentum
        edit = edit + self.edit_momentum_scale * momentum
        state.momentum = self.edit_mom_beta * momentum + (1 - self.edit_mom_beta) * edit
        guided = combine_guidance(prompt_eps, null_eps, config.cfg_scale, config.cfg_formula)
        return guided + edit if step.index >= self.edit_warmup_steps else guided
