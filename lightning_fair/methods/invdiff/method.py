"""InvDiff (Hou et al., 2024): a small delta UNet trained with a group-invariance loss beside the frozen model."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_fair.data.base import AttributeDataModule
from lightning_fair.data.dataset import AttributeImageDataset
from lightning_fair.data.keyed_rows import KeyedRows, split_fingerprint
from lightning_fair.data.resampling import group_ids
from lightning_fair.diffusion import SamplerConfig, SamplingState, Step
from lightning_fair.diffusion.guidance import combine_guidance
from lightning_fair.diffusion.seeding import NOISE_STREAM, per_sample_randn, sample_generators, training_generators
from lightning_fair.methods.conditions import Prompts
from lightning_fair.methods.invdiff.grouper import (
    group_agreement,
    group_summary,
    optimise_group_weights,
    per_sample_losses,
)
from lightning_fair.methods.invdiff.objective import check_delta_ratio, group_invariance_loss, mix_eps
from lightning_fair.methods.plain import ConditionalSampling
from lightning_fair.utils.files import write_text_atomically
from lightning_fair.utils.options import check_ranges
from lightning_fair.utils.run_folder import run_folder

GROUPS_SPLIT = "train"
GROUPS_KIND = "groups"
DEFAULT_GROUPS_FILE = "groups.safetensors"


class InvDiff(ConditionalSampling):
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
            probability={"condition_dropout": condition_dropout},
        )
        self.groups_file = groups_file
        self.groups = groups
        self.num_groups = num_groups
        self.grouper_timesteps = grouper_timesteps
        self.delta_channels = delta_channels
        self.init_from_backbone = init_from_backbone
        self.delta_ratio = delta_ratio
        self.invariance_weight = invariance_weight
        self.condition_dropout = condition_dropout
        self.assignment: KeyedRows | None = None
        super().__init__(
            backbone=backbone, sampler=sampler, seed=seed, prompts=prompts, target_distribution=target_distribution
        )
        self.require_classes(null=self.uses_cfg or condition_dropout > 0)
        num_train_timesteps = int(self.backbone.scheduler_config["num_train_timesteps"])
        outside = [t for t in grouper_timesteps or [] if not 0 <= t < num_train_timesteps]
        if outside:
            raise ValueError(f"Option 'grouper_timesteps' must lie in 0..{num_train_timesteps - 1}, got {outside}")

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
        data = self.image_data()
        if data is None:
            raise ValueError("InvDiff trains on images with attributes: give it an AttributeDataModule as 'data'")
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

    # -------------------------------------------------------------------------------------- bias inference

    def on_fit_start(self) -> None:
        """Reads the groups file, or infers the groups and writes it (every process gets the same groups)."""
        super().on_fit_start()
        if self.groups == "inferred":
            self.assignment = self.load_or_infer_groups()

    def fit_diagnostics(self) -> list[Path]:
        """The inferred groups' report (agreement with the hidden groups, sizes) next to ``groups_file``."""
        return [self.groups_path().with_suffix(".json")] if self.groups == "inferred" else []

    def groups_path(self) -> Path:
        """``groups_file``, or ``groups.safetensors`` in the run's log folder."""
        return Path(self.groups_file) if self.groups_file else run_folder(self.trainer) / DEFAULT_GROUPS_FILE

    def load_or_infer_groups(self) -> KeyedRows:
        """The groups of the train split: read back (and checked) from ``groups_file``, or inferred and written."""
        data = self.training_data()
        rows = data.split_indices(GROUPS_SPLIT)
        provenance = {
            "backbone": self.hparams["backbone"],
            "dataset": str(data.root),
            "split": GROUPS_SPLIT,
            "fingerprint": split_fingerprint([data.table.image_paths[row] for row in rows], data.root),
            "num_groups": str(self.num_groups),
        }
        path = self.groups_path()
        if path.exists():
            assignment = KeyedRows.load(path, "groups_file", GROUPS_KIND)
            assignment.check(path, "groups_file", GROUPS_KIND, provenance)
            rank_zero_info(f"InvDiff: read the groups of {len(assignment.indices)} images ({path})")
            return assignment
        dataset = AttributeImageDataset(
            [data.table.image_paths[row] for row in rows], data.table.attributes[rows], rows, data.transform(False)
        )
        start = time.perf_counter()
        indices, losses = per_sample_losses(
            self.backbone,
            dataset,
            lambda attributes: self.class_condition(self.labels_of(attributes)),
            self.sampler.add_noise,
            self.seed,
            self.grouper_timesteps,
            self.hparams["grouper_batch_size"],
            self.device,
            self.trainer.global_rank,
            self.trainer.world_size,
        )
        pass_seconds = time.perf_counter() - start
        start = time.perf_counter()
        weights = optimise_group_weights(
            losses,
            self.num_groups,
            self.hparams["grouper_steps"],
            self.hparams["grouper_learning_rate"],
            self.hparams["grouper_min_weight"],
            self.seed,
        )
        assignment = KeyedRows(indices, {"weights": weights, "losses": losses}, provenance)
        true_groups, _ = self.true_groups(data, indices.numpy())
        report = {
            "images": len(indices),
            **group_agreement(weights, true_groups),
            **group_summary(weights, losses),
            "pass_seconds": pass_seconds,
            "weights_seconds": time.perf_counter() - start,
            "processes": self.trainer.world_size,
        }
        if self.trainer.is_global_zero:
            assignment.save(path)
            write_text_atomically(path.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
        self.trainer.strategy.barrier()
        rank_zero_info(
            f"InvDiff: inferred {self.num_groups} groups of {len(indices)} images in {pass_seconds:.1f} s (pass) + "
            f"{report['weights_seconds']:.1f} s (weights); agreement with the hidden groups: NMI "
            f"{report['nmi']:.3f}, purity {report['purity']:.3f} (log only); written to {path}"
        )
        return assignment

    def group_weights(self, batch: dict[str, Tensor]) -> Tensor:
        """The batch's group rows: its rows of the inferred ``W``, or one-hot true groups."""
        if self.groups == "labels":
            data = self.training_data()
            groups, count = self.true_groups(data, batch["index"].cpu().numpy())
            return F.one_hot(torch.as_tensor(groups), count).to(self.device)
        if self.assignment is None:
            raise RuntimeError("InvDiff's groups are read at the start of fit")
        return self.assignment.rows("weights", batch["index"]).to(self.device)

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
        optimizer = torch.optim.AdamW(
            self.delta.parameters(),
            lr=self.hparams["learning_rate"],
            betas=(0.9, 0.999),
            weight_decay=self.hparams["weight_decay"],
            eps=1e-8,
        )
        warmup = self.hparams["warmup_steps"]
        total = max(int(self.trainer.estimated_stepping_batches), warmup + 1)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (total - warmup))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

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
