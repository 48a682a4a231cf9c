"""Self-Guided Diffusion (Hu et al., CVPR 2023) over a frozen model: k-means pseudo-labels guide through an adapter."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from lightning_fair.backbones import AdapterInputs
from lightning_fair.classifiers import load_classifier
from lightning_fair.data.keyed_rows import KeyedRows
from lightning_fair.data.prompt_sets import batch_prompt
from lightning_fair.diffusion import SamplerConfig, SamplingState, Step
from lightning_fair.diffusion.seeding import (
    per_sample_randn,
    training_generators,
)
from lightning_fair.methods.base import DebiasingMethod
from lightning_fair.methods.conditions import Prompts
from lightning_fair.methods.lifecycle.calibration import ScaleCalibration
from lightning_fair.methods.lifecycle.schedules import adamw_with_warmup
from lightning_fair.methods.self_guidance.annotation import CLUSTERS, SelfAnnotation
from lightning_fair.methods.self_guidance.lora import LORA_TARGETS, add_lora
from lightning_fair.methods.self_guidance.targets import TargetClusterWeights
from lightning_fair.metrics import validate_distribution
from lightning_fair.utils.options import check_ranges
from lightning_fair.utils.run_folder import run_folder

CLUSTER_ATTRIBUTE = "cluster"


class ClusterEmbedding(nn.Module):
    """The paper's cluster embedding: one-hot ``K`` -> ``Linear(K, d/2)`` -> SiLU -> ``Linear(d/2, d)``.

    Its output is added to the frozen UNet's time embedding (width ``d``); the last layer starts at zero, so the
    adapter starts as the frozen model. The null condition of classifier-free guidance adds nothing.
    """

    def __init__(self, num_clusters: int, width: int) -> None:
        super().__init__()
        self.num_clusters = num_clusters
        self.layers = nn.Sequential(nn.Linear(num_clusters, width // 2), nn.SiLU(), nn.Linear(width // 2, width))
        nn.init.zeros_(self.layers[-1].weight)
        nn.init.zeros_(self.layers[-1].bias)

    def forward(self, clusters: Tensor) -> Tensor:
        """``(B, d)`` embeddings of cluster ids ``(B,)``."""
        return self.layers(F.one_hot(clusters, self.num_clusters).float())


class SelfGuidance(SelfAnnotation, TargetClusterWeights, DebiasingMethod):
    """Self-Guided Diffusion: k-means clusters of self-supervised features condition the frozen model via an adapter.

    ``fit`` (1) extracts features of the train split (``features``: the backbone's own h-space at
    ``feature_timestep``, a local timm model, or the attribute classifier's, a supervised reference), (2) clusters them
    with k-means on L2-normalised features (written to ``clusters_file`` keyed by dataset index with the feature
    extractor and the split's fingerprint, and reused when present; the clusters' NMI and composition against the
    data's attributes go to the log and a JSON beside the file, never into training), and (3) trains the cluster
    embedding alone (the frozen UNet sees the neutral condition plus the embedding added to its time embedding; the
    cluster is dropped to the null condition, no embedding, with probability ``condition_dropout``).

    At sampling each sample draws a cluster (``cluster_distribution``): ``data`` (the clusters' training frequencies,
    which reproduce the bias), ``uniform`` (the paper's; no attribute label anywhere, but k-means gives each region of
    the data clusters in proportion to its mass, so the draw keeps much of the bias), ``modes`` (no label either:
    uniform over the data's density modes, found by HDBSCAN on the same features, then over each mode's images, so a
    minority that forms its own mode gets a mode's share whatever its size) or ``target`` (weights solved so that the
    attribute distributions the clusters carry, from the ``classifier``'s labels of their members, match
    ``target_distributions``: labels, but no retraining). The sampler's classifier-free guidance (``cfg_scale``; the
    paper's default is 2 with the ``imagen`` formula) is on the cluster: both branches of its one batched call have the
    neutral condition, one with the cluster embedding.

    With ``calibration_scales``, the end of ``fit`` (its last epoch, by ``max_epochs`` or ``max_steps``) replaces the
    sampler's ``cfg_scale`` by the one of those scales that brings the ``classifier``'s labels of
    ``calibration_samples`` samples to ``target_distributions`` at the least quality cost (the rule of Distribution
    Guidance's ``guidance_scale``, :func:`~lightning_fair.methods.lifecycle.calibration.choose_scale`); the choice is
    logged, the curve written as ``cfg_scale_curve.png``/``.csv`` and the scale kept in the checkpoint.

    Simplifications: the paper trains the whole UNet on cluster ids; here the UNet stays frozen and only the
    embedding learns the cluster condition (added to the time embedding rather than concatenated to it, which the
    frozen UNet's layers could not read).

    Args:
        backbone: a diffusers folder or shipped model name.
        clusters_file: where the clusters are read from, or written to when it does not exist (default:
            ``clusters.safetensors`` in the run's log folder).
        sampler: settings of the sampling loop (``cfg_scale`` guides the cluster).
        seed: seed of the run (features' noise, k-means, training draws, cluster draws).
        prompts: the neutral prompt on a text-to-image backbone.
        features: ``hspace``, ``timm`` or ``classifier``.
        feature_timestep: the noise level of ``hspace`` features.
        feature_model: the timm architecture of ``timm`` features (e.g. ``vit_base_patch16_224``).
        feature_weights: its local weights file.
        feature_batch_size: images per batch of the feature pass.
        num_clusters: ``K``.
        cluster_distribution: ``data``, ``uniform``, ``modes`` or ``target``.
        mode_min_share: the smallest density mode of ``modes``, as a share of the training images.
        classifier: an ``AttributeClassifier`` for ``classifier`` features and ``target`` draws.
        target_distributions: per attribute of the classifier, the distribution the clusters must carry (``target``).
        labels_per_cluster: members of each cluster the classifier labels for ``target`` (all when ``None``).
        lora_rank: rank of LoRA adapters (peft) on the frozen UNet's layers, trained with the embedding for more
            capacity; 0 (default) trains the embedding alone.
        lora_target_modules: the UNet layers LoRA adapts, by name (default: the attention projections ``to_q``,
            ``to_k``, ``to_v``, ``to_out.0``; ``conv1``, ``conv2`` for the ResNet convolutions).
        condition_dropout: probability of training on the null condition.
        learning_rate: AdamW learning rate after warm-up (the paper's at 32 px: 3e-4).
        weight_decay: AdamW weight decay (the paper's: 0.01).
        warmup_steps: linear warm-up steps (the paper's: 500).
        calibration_scales: the ``cfg_scale`` values tried at the end of ``fit`` (``None``: the sampler's is kept);
            needs ``classifier`` and ``target_distributions``.
        calibration_samples: samples per tried scale (default: the generation requests'
            ``calibration_samples``).
        calibration_batch_size: global batch of the calibration samples (default: the generation requests').
    """

    name = "self_guidance"

    def __init__(
        self,
        backbone: str,
        clusters_file: str | None = None,
        sampler: SamplerConfig | None = None,
        seed: int = 0,
        prompts: Prompts | None = None,
        features: Literal["hspace", "timm", "classifier"] = "hspace",
        feature_timestep: int = 500,
        feature_model: str | None = None,
        feature_weights: str | None = None,
        feature_batch_size: int = 64,
        num_clusters: int = 16,
        cluster_distribution: Literal["data", "uniform", "modes", "target"] = "uniform",
        mode_min_share: float = 0.005,
        classifier: str | None = None,
        target_distributions: dict[str, list[float]] | None = None,
        labels_per_cluster: int | None = None,
        lora_rank: int = 0,
        lora_target_modules: list[str] | None = None,
        condition_dropout: float = 0.1,
        learning_rate: float = 3e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 500,
        calibration_scales: list[float] | None = None,
        calibration_samples: int | None = None,
        calibration_batch_size: int | None = None,
    ) -> None:
        if calibration_scales is not None and (classifier is None or not target_distributions):
            raise ValueError("Option 'calibration_scales' needs a 'classifier' and 'target_distributions' to aim for")
        if features not in ("hspace", "timm", "classifier"):
            raise ValueError(f"Option 'features' must be 'hspace', 'timm' or 'classifier', got {features!r}")
        if cluster_distribution not in ("data", "uniform", "modes", "target"):
            raise ValueError(
                "Option 'cluster_distribution' must be 'data', 'uniform', 'modes' or 'target', "
                f"got {cluster_distribution!r}"
            )
        if num_clusters < 2:
            raise ValueError(f"Option 'num_clusters' (K) must be at least 2, got {num_clusters}")
        needs_classifier = features == "classifier" or cluster_distribution == "target"
        if needs_classifier and classifier is None:
            raise ValueError("Option 'classifier' is needed by features='classifier' and cluster_distribution='target'")
        if cluster_distribution == "target" and not target_distributions:
            raise ValueError("Option 'target_distributions' is needed by cluster_distribution='target'")
        if features == "timm" and (feature_model is None or feature_weights is None):
            raise ValueError("features='timm' needs 'feature_model' and a local 'feature_weights' file")
        check_ranges(
            positive={
                "feature_batch_size": feature_batch_size,
                "learning_rate": learning_rate,
                "mode_min_share": mode_min_share,
                "labels_per_cluster": labels_per_cluster,
                "calibration_samples": calibration_samples,
                "calibration_batch_size": calibration_batch_size,
            },
            non_negative={"weight_decay": weight_decay, "warmup_steps": warmup_steps, "lora_rank": lora_rank},
            probability={"condition_dropout": condition_dropout},
        )
        self.clusters_file = clusters_file
        self.feature_kind = features
        self.feature_timestep = feature_timestep
        self.feature_model = feature_model
        self.feature_weights = feature_weights
        self.feature_batch_size = feature_batch_size
        self.num_clusters = num_clusters
        self.cluster_distribution = cluster_distribution
        self.mode_min_share = mode_min_share
        self.classifier_reference = classifier
        self.target_distributions = target_distributions or {}
        self.labels_per_cluster = labels_per_cluster
        self.lora_rank = lora_rank
        self.lora_target_modules = lora_target_modules
        self.condition_dropout = condition_dropout
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.calibration = None
        if calibration_scales is not None:
            scales = list(calibration_scales)
            self.calibration = ScaleCalibration("cfg_scale", scales, calibration_samples, calibration_batch_size)
        self.clusters: KeyedRows | None = None
        super().__init__(backbone=backbone, sampler=sampler, seed=seed, prompts=prompts)
        steps = int(self.backbone.scheduler_config["num_train_timesteps"])
        if not 0 <= feature_timestep < steps:
            raise ValueError(f"Option 'feature_timestep' must lie in 0..{steps - 1}, got {feature_timestep}")

    def configure_modules(self) -> None:
        """The cluster embedding, the feature extractor and the buffers of the cluster draws."""
        width = self.backbone.unet.time_embedding.linear_2.out_features
        self.embedding = ClusterEmbedding(self.num_clusters, width)
        if self.lora_rank:
            add_lora(self.backbone.unet, self.lora_rank, self.lora_target_modules or LORA_TARGETS)
        if self.classifier_reference is not None:
            self.add_frozen("classifier", load_classifier(self.classifier_reference))
        self.register_buffer("cluster_frequencies", torch.full((self.num_clusters,), 1.0 / self.num_clusters))
        self.register_buffer("mode_weights", torch.full((self.num_clusters,), 1.0 / self.num_clusters))
        for name, target in self.target_distributions.items():
            column = self.classifier.attribute_index(name, "target_distributions")
            validate_distribution(target, self.classifier.num_classes[column], f"target_distributions.{name}")
        self._draw_weights: Tensor | None = None

    def evaluation_targets(self) -> dict[str, list[float]]:
        """``target_distributions`` (none with uniform or data cluster draws: the evaluator's own then)."""
        return {name: list(target) for name, target in self.target_distributions.items()}

    def setup(self, stage: str) -> None:
        """Checks the training images against the backbone and tells the classifier their view."""
        super().setup(stage)
        data = self.image_data() if stage == "fit" else None
        if data is not None and self.classifier_reference is not None:
            self.classifier.expect_inputs(data.center_crop_fraction, f"the training images of '{data.root}'")

    def fit_diagnostics(self) -> list[Path]:
        """The clusters' report (sizes, NMI, composition) next to ``clusters_file``; the cfg_scale curve if searched."""
        searched = [] if self.calibration is None else self.calibration.diagnostics(run_folder(self.trainer))
        return [CLUSTERS.report(self.clusters_file, self.trainer), *searched]

    def set_cfg_scale(self, scale: float) -> None:
        """Sets the sampler's classifier-free guidance scale (and the hyperparameter reports read)."""
        self.sampler.config.cfg_scale = scale
        self.hparams.update(sampler=asdict(self.sampler.config))

    def on_train_epoch_end(self) -> None:
        """At the end of the last epoch, calibrates ``cfg_scale`` when ``calibration_scales`` are given."""
        if self.calibration is not None:
            targets = {name: torch.tensor(values).float() for name, values in self.target_distributions.items()}
            self.calibration.at_epoch_end(self, self.set_cfg_scale, targets)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also keeps a calibrated ``cfg_scale``."""
        super().on_save_checkpoint(checkpoint)
        if self.calibration is not None:
            self.calibration.record(checkpoint, self.sampler.config.cfg_scale)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Takes the checkpoint's calibrated ``cfg_scale`` when this run calibrates too (its own otherwise).

        A checkpoint from before the ``modes`` draw has no mode weights: it serves every other draw.
        """
        state = checkpoint["state_dict"]
        if "mode_weights" not in state:
            if self.cluster_distribution == "modes":
                raise ValueError(
                    f"{self._checkpoint_name()} has no mode weights (its fit predates cluster_distribution='modes'); "
                    "fit again with a new 'clusters_file'"
                )
            state["mode_weights"] = self.mode_weights.detach().clone()
        super().on_load_checkpoint(checkpoint)
        if self.calibration is None:
            return
        calibrated = self.calibration.restored(checkpoint)
        if calibrated is None:
            rank_zero_warn(
                f"{self._checkpoint_name()} has no calibrated cfg_scale (its fit did not reach its last epoch): "
                f"sampling with the sampler's cfg_scale {self.sampler.config.cfg_scale}"
            )
        else:
            self.set_cfg_scale(calibrated)

    # -------------------------------------------------------------------------------------------- training

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Diffusion loss of the frozen model with the cluster embedding (null with ``condition_dropout``)."""
        if self.clusters is None:
            raise RuntimeError("SelfGuidance's clusters are read at the start of fit")
        clusters = self.clusters.rows("assignments", batch["index"]).to(self.device)
        generators = training_generators(self.seed, self.current_epoch, batch["index"])
        with torch.no_grad():
            x0 = self.backbone.encode(batch["image"]).float()
        steps = int(self.backbone.scheduler_config["num_train_timesteps"])
        t = torch.cat([torch.randint(0, steps, (1,), generator=g) for g in generators]).to(self.device)
        noise = per_sample_randn(generators, tuple(x0.shape[1:]), self.device)
        kept = torch.cat([torch.rand(1, generator=g) for g in generators]).to(self.device) >= self.condition_dropout
        embedding = self.embedding(clusters) * kept[:, None].to(torch.float32)
        eps = self.backbone.eps(
            self.sampler.add_noise(x0, noise, t),
            t,
            self.neutral_condition(len(x0)),
            adapter=AdapterInputs(time_embedding=embedding),
        )
        loss = F.mse_loss(eps.float(), noise)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> dict:
        """AdamW on the cluster embedding (and the LoRA adapters) with a linear warm-up (the paper's)."""
        trainable = [parameter for parameter in self.parameters() if parameter.requires_grad]
        return adamw_with_warmup(trainable, self.learning_rate, self.weight_decay, self.warmup_steps)

    # -------------------------------------------------------------------------------------------- sampling

    def init_state(self, indices: Tensor) -> SamplingState:
        """Draws each sample's cluster; the guidance's null branch keeps the neutral condition without it."""
        clusters = self.draw_classes(indices, self.draw_weights())
        condition = self.neutral_condition(len(indices), batch_prompt(indices))
        state = SamplingState(
            indices=indices,
            condition=condition,
            null_condition=condition,
            conditions={CLUSTER_ATTRIBUTE: clusters},
        )
        return state

    def guided_eps(self, x: Tensor, step: Step, state: SamplingState) -> Tensor:
        """Classifier-free guidance on the cluster: the neutral condition with and without its embedding."""
        embedding = self.embedding(state.conditions[CLUSTER_ATTRIBUTE])
        adapter = AdapterInputs(time_embedding=embedding)
        return self.unet_eps(x, step, state, adapter=adapter, null_adapter=AdapterInputs())
