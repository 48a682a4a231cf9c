"""InvDiff (Hou et al., 2024): a small delta UNet trained with a group-invariance loss beside the frozen model."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_fair.data.base import AttributeDataModule
from lightning_fair.data.keyed_rows import KeyedRows
from lightning_fair.data.resampling import group_ids
from lightning_fair.diffusion import SamplerConfig, SamplingState, Step
from lightning_fair.diffusion.guidance import combine_guidance
from lightning_fair.diffusion.seeding import NOISE_STREAM, per_sample_randn, sample_generators, training_generators
from lightning_fair.methods.conditions import Prompts
from lightning_fair.methods.invdiff.bias_inference import BiasInference
from lightning_fair.methods.invdiff.objective import check_delta_ratio, group_invariance_loss, mix_eps
from lightning_fair.methods.lifecycle.schedules import adamw_warmup_cosine
from lightning_fair.methods.plain import ConditionalSampling
from lightning_fair.utils.options import check_ranges


class InvDiff(BiasInference, ConditionalSampling):
    """InvDiff: bias groups inferred without labels, a delta UNet trained to be invariant across them.

    ``fit`` runs two stages. (1) **Bias inference**, unless ``groups_file`` exists: one pass of the frozen model over
    the train split (each image noised with noise drawn from ``(seed, dataset index)``; its loss is taken against
    that noise, where the official code compares the prediction with the clean latent, a bug), then ``W`` (soft
    groups, one row on the simplex per image) is optimised to spread the per-group mean losses (official: 500
    full-batch Adam steps, lr 0.01, unbiased std). ``W`` is written to ``groups_file`` keyed by dataset index (the
    official code loses that alignment), with the backbone and a fingerprint of the split's images, and is checked
    against them when it is read back. The pass is sharded by batch across processes and gathered, so 1 and N
    processes write the same ``W``. How well the groups match the hidden (target, sensitive) groups of the data
    (NMI, purity) is logged and written beside the file: it is never used in training. (2) **Training** of the delta
    UNet (the backbone's kind, ``delta_channels`` wide, output layer zero-initialised; only it trains and only it is
    checkpointed) on ``mean_k L_k + lambda var_k L_k`` over the groups in each batch (``groups: labels`` uses the
    true groups instead: the oracle ablation), the training noise prediction being the mixed one of sampling.

    Sampling conditions each sample on a class drawn from ``target_distribution`` as :class:`ConditionalSampling`
    (class labels, or ``prompts.classes`` on a text-to-image backbone) and mixes the frozen prediction with the
    delta's (see :func:`~lightning_fair.methods.invdiff.objective.mix_eps`), each under the sampler's
    classifier-free guidance; nothing else in the loop changes.

    Simplifications: the group loss is taken over each process's batch (as the official code, which never gathers
    it); the paper's "invariant guidance" is the delta's share of the mixed prediction, its only knob ``delta_ratio``
    (as the official code).

    Args:
        backbone: a class-conditional or text-to-image diffusers folder or shipped model name.
        groups_file: where the inferred groups are read from, or written to when it does not exist (default:
            ``groups.safetensors`` in the run's log folder).
        sampler: settings of the sampling loop.
        seed: seed of the run (sampling, grouping noise, training draws).
        prompts: the prompt of each class on a text-to-image backbone (``prompts.attribute`` names the data
            attribute whose classes they are).
        target_distribution: probabilities of the conditioning classes when sampling (uniform by default).
        groups: ``inferred`` (from ``groups_file``) or ``labels`` (true (target, sensitive) groups: the oracle).
        num_groups: ``K``, the number of inferred groups (official: 8 for CelebA, 4 for Waterbirds).
        grouper_steps: Adam steps of the group weights.
        grouper_learning_rate: their learning rate.
        grouper_min_weight: ``beta``, weight of the official min-weight term (0 in the official final runs).
        grouper_timesteps: timesteps the grouping loss is averaged over; ``None``: one uniform timestep per image
            (the official code).
        grouper_batch_size: images per UNet call of the inference pass.
        grouper: ``spread`` (the official soft groups whose mean losses spread most; ``num_groups`` of them),
            ``tail`` (hard groups: each conditioning class's ``grouper_tail_share`` highest losses, and the rest) or
            ``clusters`` (hard groups: each class's images of each of ``num_groups`` k-means clusters of the frozen
            model's h-space at ``grouper_feature_timestep``, Self-Guidance's features).
        grouper_normalisation: ``none`` (an image's loss is its mean over ``grouper_timesteps``) or ``timestep``
            (the mean of its z-scores, each timestep standardised over the images).
        grouper_tail_share: the share of each class in its tail group (``tail``).
        grouper_feature_timestep: the noise level of the features of ``clusters``.
        delta_channels: widths of the delta UNet's levels (default: the frozen UNet's divided by 4, rounded up to its
            group-norm size).
        init_from_backbone: start the delta from a copy of the frozen weights (same widths; the official CelebA
            choice); its output layer is zero-initialised either way.
        delta_ratio: ``r`` of the output mixing (official: 0.2 with a small delta for Waterbirds, 0.8 with a copy
            for CelebA).
        invariance_weight: ``lambda``, the weight of the variance of the group losses (official: 1).
        condition_dropout: probability of training the delta on the null condition, which classifier-free guidance
            queries (0 in the official code).
        learning_rate: AdamW learning rate after warm-up (official: 1e-4).
        weight_decay: AdamW weight decay (official: 1e-2).
        warmup_steps: linear warm-up steps, then a cosine decay to 0 at the end of training (official: 1000).
    """

    name = "invdiff"

    def __init__(
        self,
        backbone: str,
        groups_file: str | None = None,
        sampler: SamplerConfig | None = None,
        seed: int = 0,
        prompts: Prompts | None = None,
        target_distribution: list[float] | None = None,
        groups: Literal["inferred", "labels"] = "inferred",
        num_groups: int = 8,
        grouper_steps: int = 500,
        grouper_learning_rate: float = 0.01,
        grouper_min_weight: float = 0.0,
        grouper_timesteps: list[int] | None = None,
        grouper_batch_size: int = 64,
        grouper: Literal["spread", "tail", "clusters"] = "spread",
        grouper_normalisation: Literal["none", "timestep"] = "none",
        grouper_tail_share: float = 0.05,
        grouper_feature_timestep: int = 200,
        delta_channels: list[int] | None = None,
        init_from_backbone: bool = False,
        delta_ratio: float = 0.8,
        invariance_weight: float = 1.0,
        condition_dropout: float = 0.0,
        learning_rate: float = 1e-4,
        weight_decay: float = 1e-2,
        warmup_steps: int = 1000,
    ) -> None:
        if groups not in ("inferred", "labels"):
            raise ValueError(f"Option 'groups' must be 'inferred' or 'labels', got {groups!r}")
        if num_groups < 2:
            raise ValueError(f"Option 'num_groups' (K) must be at least 2, got {num_groups}")
        if grouper not in ("spread", "tail", "clusters"):
            raise ValueError(f"Option 'grouper' must be 'spread', 'tail' or 'clusters', got {grouper!r}")
        if grouper_normalisation not in ("none", "timestep"):
            raise ValueError(
                f"Option 'grouper_normalisation' must be 'none' or 'timestep', got {grouper_normalisation!r}"
            )
        check_delta_ratio(delta_ratio)
        check_ranges(
            positive={
                "grouper_steps": grouper_steps,
                "grouper_learning_rate": grouper_learning_rate,
                "grouper_batch_size": grouper_batch_size,
                "learning_rate": learning_rate,
            },
            non_negative={
                "grouper_min_weight": grouper_min_weight,
                "invariance_weight": invariance_weight,
                "weight_decay": weight_decay,
                "warmup_steps": warmup_steps,
            },
            probability={"condition_dropout": condition_dropout, "grouper_tail_share": grouper_tail_share},
        )
        self.groups_file = groups_file
        self.grouper = grouper
        self.grouper_normalisation = grouper_normalisation
        self.grouper_tail_share = grouper_tail_share
        self.grouper_feature_timestep = grouper_feature_timestep
        self.groups = groups
        self.num_groups = num_groups
        self.grouper_steps = grouper_steps
        self.grouper_learning_rate = grouper_learning_rate
        self.grouper_min_weight = grouper_min_weight
        self.grouper_timesteps = grouper_timesteps
        self.grouper_batch_size = grouper_batch_size
        self.delta_channels = delta_channels
        self.init_from_backbone = init_from_backbone
        self.delta_ratio = delta_ratio
        self.invariance_weight = invariance_weight
        self.condition_dropout = condition_dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.assignment: KeyedRows | None = None
        super().__init__(
            backbone=backbone, sampler=sampler, seed=seed, prompts=prompts, target_distribution=target_distribution
        )
        self.require_classes(null=self.uses_cfg or condition_dropout > 0)
        num_train_timesteps = int(self.backbone.scheduler_config["num_train_timesteps"])
        outside = [t for t in grouper_timesteps or [] if not 0 <= t < num_train_timesteps]
        if outside:
            raise ValueError(f"Option 'grouper_timesteps' must lie in 0..{num_train_timesteps - 1}, got {outside}")
        if not 0 <= grouper_feature_timestep < num_train_timesteps:
            raise ValueError(
                f"Option 'grouper_feature_timestep' must lie in 0..{num_train_timesteps - 1}, got "
                f"{grouper_feature_timestep}"
            )

    def configure_modules(self) -> None:
        """Builds the delta UNet, its output layer at zero."""
        channels = self.delta_channels
        if channels is None and not self.init_from_backbone:
            config = self.backbone.unet.config
            groups = config.get("norm_num_groups") or 1
            channels = [max(groups, math.ceil(width / 4 / groups) * groups) for width in config["block_out_channels"]]
        self.delta = self.backbone.companion_unet(channels, copy_weights=self.init_from_backbone)
        torch.nn.init.zeros_(self.delta.conv_out.weight)
        torch.nn.init.zeros_(self.delta.conv_out.bias)

    @property
    def parameter_counts(self) -> dict[str, int]:
        """Trainable (delta) and frozen UNet parameters."""
        return {
            "delta": sum(parameter.numel() for parameter in self.delta.parameters()),
            "frozen_unet": sum(parameter.numel() for parameter in self.backbone.unet.parameters()),
        }

    # -------------------------------------------------------------------------------------------- the data

    def training_data(self) -> AttributeDataModule:
        """The DataModule of ``fit``; refuses one without the attributes the groups and conditions need."""
        data = self.required_image_data()
        needed = {"condition": self.condition_attribute, "sensitive": data.sensitive}
        if self.groups == "labels":
            needed["target"] = data.target
        for role, name in needed.items():
            if name is None or name not in data.attributes:
                raise ValueError(
                    f"InvDiff needs the {role} attribute {name!r} among the data's 'attributes' {data.attributes}"
                    + (" (set 'prompts.attribute' to the attribute the prompts name)" if role == "condition" else "")
                )
        return data

    def true_groups(self, data: AttributeDataModule, rows: np.ndarray) -> tuple[np.ndarray, int]:
        """The (target, sensitive) group of table ``rows`` (the sensitive class alone without a target), and ``K``."""
        table = data.table
        classes = dict(zip(data.attributes, data.num_classes, strict=True))
        sensitive = table.column(data.sensitive)[rows]
        if data.target is None:
            return sensitive, classes[data.sensitive]
        target = table.column(data.target)[rows]
        return group_ids(target, sensitive, classes[data.sensitive]), classes[data.target] * classes[data.sensitive]

    def labels_of(self, attributes: Tensor) -> Tensor:
        """The conditioning classes of a batch's ``attributes``."""
        data = self.training_data()
        return attributes[:, data.attributes.index(self.condition_attribute)]

    # -------------------------------------------------------------------------------------------- training

    def diffusion_losses(
        self, batch: dict[str, Tensor], generators: list[torch.Generator], dropout: float
    ) -> tuple[Tensor, Tensor]:
        """Per-image squared error of the mixed and of the frozen prediction against the noise at a drawn timestep."""
        with torch.no_grad():
            x0 = self.backbone.encode(batch["image"]).float()
        steps = int(self.backbone.scheduler_config["num_train_timesteps"])
        t = torch.cat([torch.randint(0, steps, (1,), generator=g) for g in generators]).to(self.device)
        noise = per_sample_randn(generators, tuple(x0.shape[1:]), self.device)
        condition = self.class_condition(self.labels_of(batch["attributes"]))
        dropped = torch.cat([torch.rand(1, generator=g) for g in generators]).to(self.device) < dropout
        if dropped.any():
            null = self.backbone.null_condition(len(dropped), self.device)
            condition = torch.where(dropped.view(-1, *[1] * (condition.ndim - 1)), null, condition)
        x = self.sampler.add_noise(x0, noise, t)
        with torch.no_grad():
            frozen = self.backbone.eps(x, t, condition).float()
        delta = self.backbone.companion_output(self.delta, x, t, condition).float()
        eps = mix_eps(frozen, delta, self.delta_ratio)

        def error(prediction: Tensor) -> Tensor:
            return (prediction - noise.float()).pow(2).flatten(1).mean(dim=1)

        return error(eps), error(frozen).detach()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """The group-invariance loss; each image's draws depend only on ``(seed, epoch, index)``."""
        generators = training_generators(self.seed, self.current_epoch, batch["index"])
        losses, _ = self.diffusion_losses(batch, generators, self.condition_dropout)
        loss, group_losses = group_invariance_loss(losses, self.group_weights(batch), self.invariance_weight)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/mse", losses.mean())
        self.log("train/group_loss_spread", group_losses.max() - group_losses[group_losses > 0].min())
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Mean squared error of the mixed and the frozen prediction, and the mixed one per true group (for the log).

        The draws of each image are fixed (seeded by its index), so every validation compares the same noise.
        """
        generators = sample_generators(self.seed, batch["index"], NOISE_STREAM)
        with torch.no_grad():
            losses, frozen = self.diffusion_losses(batch, generators, dropout=0.0)
        data = self.training_data()
        groups, count = self.true_groups(data, batch["index"].cpu().numpy())
        one_hot = F.one_hot(torch.as_tensor(groups), count).to(losses)
        self.log("val/loss", losses.mean(), prog_bar=True, sync_dist=True)
        self.log("val/loss_frozen", frozen.mean(), sync_dist=True)
        sums, counts = (losses[:, None] * one_hot).sum(dim=0), one_hot.sum(dim=0)
        for group in range(count):
            if counts[group] > 0:
                self.log(f"val/loss_group{group}", sums[group] / counts[group], sync_dist=True)

    def configure_optimizers(self) -> dict:
        """AdamW on the delta, linear warm-up then cosine decay over the run (the official schedule)."""
        total = int(self.trainer.estimated_stepping_batches)
        return adamw_warmup_cosine(
            self.delta.parameters(), self.learning_rate, self.weight_decay, self.warmup_steps, total
        )

    def on_train_start(self) -> None:
        """Logs the trainable and frozen parameter counts."""
        counts = self.parameter_counts
        rank_zero_info(
            f"InvDiff: delta UNet {counts['delta']:,} parameters, frozen UNet {counts['frozen_unet']:,} "
            f"({counts['delta'] / counts['frozen_unet']:.1%})"
        )

    # -------------------------------------------------------------------------------------------- sampling

    def delta_output(self, x: Tensor, step: Step, state: SamplingState) -> Tensor:
        """The delta's output for the state's condition, under the sampler's classifier-free guidance."""
        if not self.uses_cfg:
            return self.backbone.companion_output(self.delta, x, step.timestep, state.condition)
        both = self.backbone.companion_output(
            self.delta, torch.cat([x, x]), step.timestep, torch.cat([state.condition, state.null_condition])
        )
        conditional, null = both.chunk(2)
        config = self.sampler.config
        return combine_guidance(conditional, null, config.cfg_scale, config.cfg_formula)

    def guided_eps(self, x: Tensor, step: Step, state: SamplingState) -> Tensor:
        """The frozen prediction mixed with the delta's (both guided alike)."""
        frozen = self.unet_eps(x, step, state)
        return mix_eps(frozen, self.delta_output(x, step, state).to(frozen.dtype), self.delta_ratio)
