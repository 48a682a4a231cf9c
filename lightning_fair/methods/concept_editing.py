"""Unified Concept Editing (Gandikota et al., WACV 2024): a closed-form edit of the cross-attention projections."""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from peft import LoraConfig, inject_adapter_in_model
from torch import Tensor, nn

from lightning_fair.classifiers import load_classifier
from lightning_fair.data.prompt_sets import sample_indices
from lightning_fair.diffusion import SamplerConfig, SamplingState, Step
from lightning_fair.methods.base import DebiasingMethod
from lightning_fair.methods.conditions import Prompts
from lightning_fair.methods.lifecycle.calibration import calibration_seed
from lightning_fair.metrics import validate_distribution

EDITED_LAYERS = r".*attn2\.to_[kv]"  # the key and value projections of every cross-attention


def edit_factors(
    weight: Tensor,
    keys: Tensor,
    shifts: Tensor,
    preserved: Tensor | None,
    lamb: float,
    edit_scale: float,
    preserve_scale: float,
) -> tuple[Tensor, Tensor]:
    """UCE's closed-form change of a projection ``W``, as the two factors of a rank-``N`` product ``up @ down``.

    The edit maps each key ``k_i`` to ``W (k_i + s_i)`` and keeps each preserved key's output:
    ``W' = (lamb W + e sum_i W (k_i + s_i) k_i^T + p sum_j W c_j c_j^T)(lamb I + e sum_i k_i k_i^T + p sum_j c_j
    c_j^T)^-1``, whose change is ``W' - W = e W S K^T M^-1`` with ``M`` the bracket on the right: ``up = e W S``
    (``(out, N)``), ``down = K^T M^-1`` (``(N, in)``).

    Args:
        weight: ``W``, ``(out, in)``.
        keys: ``(N, in)``, the edited concepts' keys.
        shifts: ``(N, in)``, what each key's target adds to it.
        preserved: ``(P, in)``, keys whose outputs are kept (``None``: none).
        lamb: the ridge weight that keeps ``W`` elsewhere.
        edit_scale: ``e``, the weight of the edited keys.
        preserve_scale: ``p``, the weight of the preserved keys.
    """
    weight, keys, shifts = weight.double(), keys.double(), shifts.double()
    moment = lamb * torch.eye(weight.shape[1], dtype=torch.float64, device=weight.device)
    moment = moment + edit_scale * keys.T @ keys
    if preserved is not None and len(preserved):
        moment = moment + preserve_scale * preserved.double().T @ preserved.double()
    down = torch.linalg.solve(moment, keys.T).T  # K^T M^-1 (M is symmetric)
    up = edit_scale * weight @ shifts.T
    return up.float(), down.float()


class UnifiedConceptEditing(DebiasingMethod):
    """Unified Concept Editing's debiasing (Gandikota et al., WACV 2024) of a text-to-image model.

    The key and value projections ``W`` of every cross-attention are edited in closed form (see
    :func:`edit_factors`) so that each neutral concept's key ``c_i`` (the embedding of the last word of each neutral
    prompt, in that prompt: "doctor" in "a photo of a doctor") maps to ``W (c_i + sum_k alpha_ik a_k)``, a mixture
    with the attribute concepts' keys ``a_k`` (``attribute_concepts``, e.g. "female", "male"). ``fit`` finds the
    ``alpha`` as the official script does: from zero, each round samples ``images_per_concept`` images of every
    neutral prompt under the current edit, labels them with ``classifier``, adds ``target - observed share`` to each
    concept's ``alpha`` (a concept within ``tolerance`` of the target is left alone) and re-solves from the original
    weights, for at most ``iterations`` rounds. No gradient step.

    The frozen backbone stays untouched: the edit is a rank-``N`` (one per neutral prompt) LoRA adapter (peft) on
    each projection, exactly ``W' - W``, and it is all the checkpoint holds. The rounds sample with this method's own
    sampler and the calibration seed (the official script: 20 steps, unseeded); every process runs them all and finds
    the same edit.

    Args:
        backbone: a text-to-image diffusers folder or shipped model name.
        classifier: the attribute classifier that measures each round's shares.
        sampler: settings of the sampling loop.
        seed: seed of the run.
        prompts: the neutral prompt(s), the edited concepts; ``attribute`` names the classifier's attribute.
        attribute_concepts: one text per class of the attribute, in the classifier's class order.
        target_distribution: the target share of each class (uniform by default).
        preserve_concepts: texts whose keys keep their outputs (none by default, as the official script).
        lamb: the ridge weight of the original projection.
        edit_scale: the weight of the edited keys.
        preserve_scale: the weight of the preserved keys.
        iterations: most rounds of measuring and re-solving.
        tolerance: largest gap between a concept's observed and target shares that counts as reached.
        images_per_concept: images of each neutral prompt per round.
    """

    name = "uce"
    conditionings = ("text",)

    def __init__(
        self,
        backbone: str,
        classifier: str,
        sampler: SamplerConfig | None = None,
        seed: int = 0,
        prompts: Prompts | None = None,
        attribute_concepts: list[str] | None = None,
        target_distribution: list[float] | None = None,
        preserve_concepts: list[str] | None = None,
        lamb: float = 0.5,
        edit_scale: float = 1.0,
        preserve_scale: float = 1.0,
        iterations: int = 30,
        tolerance: float = 0.05,
        images_per_concept: int = 10,
    ) -> None:
        self.classifier_reference = classifier
        self.attribute_concepts = attribute_concepts or ["female", "male"]
        self.target = target_distribution
        self.preserve_concepts = preserve_concepts or []
        self.lamb, self.edit_scale, self.preserve_scale = lamb, edit_scale, preserve_scale
        self.iterations, self.tolerance, self.images_per_concept = iterations, tolerance, images_per_concept
        super().__init__(backbone=backbone, sampler=sampler, seed=seed, prompts=prompts)
        self.automatic_optimization = False

    def configure_modules(self) -> None:
        """Loads the classifier (frozen) and adds the zero edit: a LoRA adapter on each edited projection."""
        if self.backbone.conditioning not in self.conditionings:
            raise ValueError(
                f"UnifiedConceptEditing edits the cross-attention of a text-to-image backbone; "
                f"'{self.backbone.reference}' is not one"
            )
        if self.lamb <= 0 or self.edit_scale <= 0 or self.preserve_scale < 0:
            raise ValueError(
                "Options 'lamb' and 'edit_scale' must be positive and 'preserve_scale' non-negative, got "
                f"{self.lamb}, {self.edit_scale} and {self.preserve_scale}"
            )
        if self.iterations < 1 or self.images_per_concept < 1 or not 0 < self.tolerance < 1:
            raise ValueError(
                "Options 'iterations' and 'images_per_concept' must be positive and 'tolerance' in (0, 1), got "
                f"{self.iterations}, {self.images_per_concept} and {self.tolerance}"
            )
        self.add_frozen("classifier", load_classifier(self.classifier_reference))
        self.attribute_column = self.classifier.attribute_index(self.condition_attribute, "prompts.attribute")
        classes = self.classifier.num_classes[self.attribute_column]
        if len(self.attribute_concepts) != classes:
            raise ValueError(
                f"Option 'attribute_concepts' must give one text per class of '{self.condition_attribute}' "
                f"({classes}), got {self.attribute_concepts}"
            )
        self.target_distribution = validate_distribution(self.target, classes, "target_distribution")
        rank = len(self.prompt_set)
        inject_adapter_in_model(
            LoraConfig(r=rank, lora_alpha=rank, target_modules=EDITED_LAYERS, lora_dropout=0.0), self.backbone.unet
        )
        for name, parameter in self.backbone.unet.named_parameters():
            if "lora_" in name:
                nn.init.zeros_(parameter)
                parameter.requires_grad_(True)  # the method's own weights: kept in its checkpoint
        self.register_buffer("alpha", torch.zeros(rank, classes))
        self.register_buffer("edited", torch.tensor(False))

    @property
    def needs_fit(self) -> bool:
        """Whether the edit is still to be solved."""
        return not bool(self.edited)

    def evaluation_targets(self) -> dict[str, list[float]]:
        """``target_distribution`` of the edited attribute."""
        return {self.condition_attribute: self.target_distribution.tolist()}

    def edited_layers(self) -> dict[str, nn.Module]:
        """The LoRA-wrapped projections, by name."""
        return {
            name: module
            for name, module in self.backbone.unet.named_modules()
            if name.endswith(("attn2.to_k", "attn2.to_v")) and hasattr(module, "lora_A")
        }

    @torch.no_grad()
    def apply_edit(self) -> None:
        """Solves the edit for the current ``alpha`` from the original weights and writes it into the adapters."""
        keys = self.backbone.last_word_embeddings(list(self.prompt_set.prompts)).float()
        attributes = self.backbone.last_word_embeddings(self.attribute_concepts).float()
        preserved = (
            self.backbone.last_word_embeddings(self.preserve_concepts).float() if self.preserve_concepts else None
        )
        shifts = self.alpha.to(keys) @ attributes
        for module in self.edited_layers().values():
            weight = module.base_layer.weight.float()
            up, down = edit_factors(weight, keys, shifts, preserved, self.lamb, self.edit_scale, self.preserve_scale)
            module.lora_B["default"].weight.copy_(up.to(module.lora_B["default"].weight))
            module.lora_A["default"].weight.copy_(down.to(module.lora_A["default"].weight))

    @torch.no_grad()
    def observed_shares(self) -> Tensor:
        """``(N, K)``: the classifier's share of each class among ``images_per_concept`` samples of each prompt."""
        shares = []
        classes = len(self.attribute_concepts)
        with calibration_seed(self):
            for prompt in range(len(self.prompt_set)):
                images, _ = self.sample(sample_indices(prompt, torch.arange(self.images_per_concept)))
                labels = self.classifier.predict(images)[:, self.attribute_column]
                shares.append(torch.bincount(labels.cpu(), minlength=classes).float() / len(labels))
        return torch.stack(shares)

    def on_fit_start(self) -> None:
        """Finds ``alpha`` round by round (see the class docstring) and leaves the last edit in the adapters."""
        super().on_fit_start()
        self.alpha.zero_()
        target = self.target_distribution.float()
        for round_number in range(1, self.iterations + 1):
            self.apply_edit()
            gaps = target - self.observed_shares()
            reached = gaps.abs().amax(dim=1) < self.tolerance
            worst = float(gaps.abs().amax())
            rank_zero_info(
                f"UnifiedConceptEditing: round {round_number}: {int(reached.sum())} of {len(reached)} concepts "
                f"within {self.tolerance} of the target (largest gap {worst:.3f})"
            )
            if bool(reached.all()):
                break
            self.alpha += torch.where(reached[:, None], 0.0, gaps).to(self.alpha)
        else:
            self.apply_edit()
            rank_zero_warn(
                f"UnifiedConceptEditing: {self.iterations} rounds left concepts beyond {self.tolerance} of the target; "
                "the last edit is kept (more 'iterations' or 'images_per_concept' may reach it)"
            )
        self.edited.fill_(True)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Nothing: the edit is solved when the fit starts."""

    def guided_eps(self, x: Tensor, step: Step, state: SamplingState) -> Tensor:
        """The edited backbone's noise for the neutral prompt."""
        return self.unet_eps(x, step, state)
