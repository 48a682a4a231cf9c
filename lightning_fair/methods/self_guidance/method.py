"""Self-Guided Diffusion (Hu et al., CVPR 2023) over a frozen model: k-means pseudo-labels guide through an adapter."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from sklearn.metrics import normalized_mutual_info_score
from torch import Tensor, nn
from torch.utils.data import Subset

from lightning_fair.backbones import AdapterInputs
from lightning_fair.classifiers import load_classifier
from lightning_fair.data.base import AttributeDataModule
from lightning_fair.data.dataset import AttributeImageDataset
from lightning_fair.data.keyed_rows import KeyedRows, sharded_pass, split_fingerprint
from lightning_fair.diffusion import SamplerConfig, SamplingState, Step
from lightning_fair.diffusion.seeding import (
    per_sample_randn,
    training_generators,
)
from lightning_fair.methods.base import DebiasingMethod
from lightning_fair.methods.conditions import Prompts
from lightning_fair.methods.scale_search import calibrate, fit_ends_here
from lightning_fair.methods.self_guidance.clusters import (
    cluster_composition,
    cluster_frequencies,
    fit_clusters,
    labelled_members,
    solve_cluster_weights,
)
from lightning_fair.methods.self_guidance.features import ClassifierFeatures, HSpaceFeatures, TimmFeatures
from lightning_fair.methods.self_guidance.lora import LORA_TARGETS, add_lora
from lightning_fair.metrics import validate_distribution
from lightning_fair.utils.files import write_text_atomically
from lightning_fair.utils.options import check_ranges
from lightning_fair.utils.run_folder import run_folder

CLUSTERS_SPLIT = "train"
CLUSTERS_KIND = "clusters"
DEFAULT_CLUSTERS_FILE = "clusters.safetensors"
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


class SelfGuidance(DebiasingMethod):
    """Self-Guided Diffusion: k-means clusters of self-supervised features condition the frozen model via an adapter.

    ``fit`` (1) extracts features of the train split (``features``: the backbone's own h-space at
    ``feature_timestep``, a local timm model, or the attribute classifier's, a supervised reference), (2) clusters them
    with k-means on L2-normalised features (written to ``clusters_file`` keyed by dataset index with the feature
    extractor and the split's fingerprint, and reused when present; the clusters' NMI and composition against the
    data's attributes go to the log and a JSON beside the file, never into training), and (3) trains the cluster
    embedding alone (the frozen UNet sees the neutral condition plus the embedding added to its time embedding; the
    cluster is dropped to the null condition, no embedding, with probability ``condition_dropout``).

    At sampling each sample draws a cluster (``cluster_distribution``): ``data`` (the clusters' training frequencies,
    which reproduce the bias), ``uniform`` (no attribute label anywhere) or ``target`` (weights solved so that the
    attribute distributions the clusters carry, from the ``classifier``'s labels of their members, match
    ``target_distributions``: labels, but no retraining). The sampler's classifier-free guidance (``cfg_scale``; the
    paper's default is 2 with the ``imagen`` formula) is on the cluster: both branches of its one batched call have the
    neutral condition, one with the cluster embedding.

    With ``calibration_scales``, the end of ``fit`` (its last epoch, by ``max_epochs`` or ``max_steps``) replaces the
    sampler's ``cfg_scale`` by the one of those scales that brings the ``classifier``'s labels of
    ``calibration_samples`` samples to ``target_distributions`` at the least quality cost (the rule of Distribution
    Guidance's ``guidance_scale``, :func:`~lightning_fair.methods.scale_search.choose_scale`); the choice is logged,
    the curve written as ``cfg_scale_curve.png``/``.csv`` and the scale kept in the checkpoint.

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
        cluster_distribution: ``data``, ``uniform`` or ``target``.
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
        calibration_samples: samples per tried scale.
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
        cluster_distribution: Literal["data", "uniform", "target"] = "uniform",
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
        calibration_samples: int = 256,
        calibration_batch_size: int | None = None,
    ) -> None:
        if calibration_scales is not None and (classifier is None or not target_distributions):
            raise ValueError("Option 'calibration_scales' needs a 'classifier' and 'target_distributions' to aim for")
        if features not in ("hspace", "timm", "classifier"):
            raise ValueError(f"Option 'features' must be 'hspace', 'timm' or 'classifier', got {features!r}")
        if cluster_distribution not in ("data", "uniform", "target"):
            raise ValueError(
                f"Option 'cluster_distribution' must be 'data', 'uniform' or 'target', got {cluster_distribution!r}"
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
                "labels_per_cluster": labels_per_cluster,
                "calibration_samples": calibration_samples,
                "calibration_batch_size": calibration_batch_size,
            },
            non_negative={"weight_decay": weight_decay, "warmup_steps": warmup_steps, "lora_rank": lora_rank},
            probability={"condition_dropout": condition_dropout},
        )
        self.clusters_file = clusters_file
        self.feature_kind = features
        self.num_clusters = num_clusters
        self.cluster_distribution = cluster_distribution
        self.condition_dropout = condition_dropout
        self.classifier_reference = classifier
        self.target_distributions = target_distributions or {}
        self.clusters: KeyedRows | None = None
        super().__init__(backbone=backbone, sampler=sampler, seed=seed, prompts=prompts)
        steps = int(self.backbone.scheduler_config["num_train_timesteps"])
        if not 0 <= feature_timestep < steps:
            raise ValueError(f"Option 'feature_timestep' must lie in 0..{steps - 1}, got {feature_timestep}")

    def configure_modules(self) -> None:
        """The cluster embedding, the feature extractor and the buffers of the cluster draws."""
        width = self.backbone.unet.time_embedding.linear_2.out_features
        self.embedding = ClusterEmbedding(self.num_clusters, width)
        if self.hparams["lora_rank"]:
            add_lora(self.backbone.unet, self.hparams["lora_rank"], self.hparams["lora_target_modules"] or LORA_TARGETS)
        if self.classifier_reference is not None:
            self.add_frozen("classifier", load_classifier(self.classifier_reference))
        self.register_buffer("cluster_frequencies", torch.full((self.num_clusters,), 1.0 / self.num_clusters))
        for name, target in self.target_distributions.items():
            column = self.classifier.attribute_index(name, "target_distributions")
            validate_distribution(target, self.classifier.num_classes[column], f"target_distributions.{name}")
        self._draw_weights: Tensor | None = None

    def evaluation_targets(self) -> dict[str, list[float]]:
        """``target_distributions`` (none with uniform or data cluster draws: the evaluator's own then)."""
        return {name: list(target) for name, target in self.target_distributions.items()}

    def feature_extractor(self) -> nn.Module:
        """The configured feature extractor (built when the features are computed)."""
        options = self.hparams
        if self.feature_kind == "hspace":
            return HSpaceFeatures(
                self.backbone, self.neutral_condition, self.sampler.add_noise, options["feature_timestep"], self.seed
            )
        if self.feature_kind == "timm":
            return TimmFeatures(options["feature_model"], options["feature_weights"]).to(self.device)
        return ClassifierFeatures(self.classifier, self.classifier_reference)

    def setup(self, stage: str) -> None:
        """Checks the training images against the backbone and tells the classifier their view."""
        super().setup(stage)
        data = self.image_data() if stage == "fit" else None
        if data is not None and self.classifier_reference is not None:
            self.classifier.expect_inputs(data.center_crop_fraction, f"the training images of '{data.root}'")

    # ------------------------------------------------------------------------------------------ self-annotation

    def training_data(self) -> AttributeDataModule:
        """The DataModule of ``fit``."""
        data = self.image_data()
        if data is None:
            raise ValueError("SelfGuidance trains on images: give it an AttributeDataModule as 'data'")
        return data

    def clusters_path(self) -> Path:
        """``clusters_file``, or ``clusters.safetensors`` in the run's log folder."""
        return Path(self.clusters_file) if self.clusters_file else run_folder(self.trainer) / DEFAULT_CLUSTERS_FILE

    def fit_diagnostics(self) -> list[Path]:
        """The clusters' report (sizes, NMI, composition) next to ``clusters_file``; the cfg_scale curve if searched."""
        curve = run_folder(self.trainer) / "cfg_scale_curve"
        searched = (
            [] if self.hparams["calibration_scales"] is None else [curve.with_suffix(s) for s in (".png", ".csv")]
        )
        return [self.clusters_path().with_suffix(".json"), *searched]

    def set_cfg_scale(self, scale: float) -> None:
        """Sets the sampler's classifier-free guidance scale (and the hyperparameter reports read)."""
        self.sampler.config.cfg_scale = scale
        self.hparams["sampler"]["cfg_scale"] = scale

    def on_train_epoch_end(self) -> None:
        """At the end of the last epoch, calibrates ``cfg_scale`` when ``calibration_scales`` are given."""
        options = self.hparams
        if options["calibration_scales"] is not None and fit_ends_here(
            self.trainer, self.current_epoch, self.global_step
        ):
            targets = {name: torch.tensor(values).float() for name, values in self.target_distributions.items()}
            calibrate(
                self,
                "cfg_scale",
                self.set_cfg_scale,
                list(options["calibration_scales"]),
                options["calibration_samples"],
                options["calibration_batch_size"],
                targets,
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also keeps a calibrated ``cfg_scale``."""
        super().on_save_checkpoint(checkpoint)
        if self.hparams["calibration_scales"] is not None:
            checkpoint["lightning_fair"]["cfg_scale"] = self.sampler.config.cfg_scale

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Takes the checkpoint's calibrated ``cfg_scale`` when this run calibrates too (its own otherwise)."""
        super().on_load_checkpoint(checkpoint)
        calibrated = checkpoint["lightning_fair"].get("cfg_scale")
        if self.hparams["calibration_scales"] is None:
            return
        if calibrated is None:
            rank_zero_warn(
                f"{self._checkpoint_name()} has no calibrated cfg_scale (its fit did not reach its last epoch): "
                f"sampling with the sampler's cfg_scale {self.sampler.config.cfg_scale}"
            )
        else:
            self.set_cfg_scale(float(calibrated))

    def on_fit_start(self) -> None:
        """Reads the clusters file, or extracts features, clusters them and writes it; keeps their frequencies."""
        super().on_fit_start()
        self.clusters = self.load_or_make_clusters()
        self.cluster_frequencies.copy_(cluster_frequencies(self.clusters.tensors["assignments"], self.num_clusters))

    def split_provenance(self, data: AttributeDataModule) -> dict[str, str]:
        """What the clusters of ``data``'s train split are tied to, whatever their features."""
        rows = data.split_indices(CLUSTERS_SPLIT)
        return {
            "backbone": self.hparams["backbone"],
            "dataset": str(data.root),
            "split": CLUSTERS_SPLIT,
            "fingerprint": split_fingerprint([data.table.image_paths[row] for row in rows], data.root),
            "num_clusters": str(self.num_clusters),
        }

    def train_split(self, data: AttributeDataModule) -> AttributeImageDataset:
        """The train split's images in dataset order, with their indices, as the feature pass reads them."""
        rows = data.split_indices(CLUSTERS_SPLIT)
        return AttributeImageDataset(
            [data.table.image_paths[row] for row in rows], data.table.attributes[rows], rows, data.transform(False)
        )

    def load_or_make_clusters(self) -> KeyedRows:
        """The clusters of the train split, read back (and checked) or made and written."""
        data = self.training_data()
        extractor = self.feature_extractor()
        provenance = {**self.split_provenance(data), "features": extractor.description}
        path = self.clusters_path()
        if path.exists():
            clusters = KeyedRows.load(path, "clusters_file", CLUSTERS_KIND)
            clusters.check(path, "clusters_file", CLUSTERS_KIND, provenance)
            rank_zero_info(f"SelfGuidance: read the clusters of {len(clusters.indices)} images ({path})")
            return clusters
        start = time.perf_counter()
        indices, features = sharded_pass(
            self.train_split(data),
            lambda batch: extractor(batch["image"], batch["index"]),
            self.hparams["feature_batch_size"],
            self.device,
            self.trainer.global_rank,
            self.trainer.world_size,
        )
        features_seconds = time.perf_counter() - start
        start = time.perf_counter()
        _, assignments = fit_clusters(features, self.num_clusters, self.seed)
        clusters = KeyedRows(indices, {"assignments": assignments}, provenance)
        report = {
            "images": len(indices),
            "features": extractor.description,
            "feature_dimension": features.shape[1],
            "features_seconds": features_seconds,
            "kmeans_seconds": time.perf_counter() - start,
            **self.cluster_report(data, indices.numpy(), assignments.numpy()),
        }
        if self.trainer.is_global_zero:
            clusters.save(path)
            write_text_atomically(path.with_suffix(".json"), json.dumps(report, indent=2) + "\n")
        self.trainer.strategy.barrier()
        nmi = ", ".join(f"{name} {value:.3f}" for name, value in report["nmi"].items())
        shares = "; ".join(
            f"{row['cluster']}: {row['size']} images, "
            + ", ".join(f"{key[6:]} {value:.2f}" for key, value in row.items() if key.startswith("share_"))
            for row in report["clusters"]
        )
        rank_zero_info(
            f"SelfGuidance: {self.num_clusters} clusters of {len(indices)} images ({extractor.description}) in "
            f"{features_seconds:.1f} s (features) + {report['kmeans_seconds']:.1f} s (k-means); written to {path}. "
            f"Against the data's attributes (log only, never used): NMI {nmi}; clusters {shares}"
        )
        return clusters

    def cluster_report(self, data: AttributeDataModule, rows: np.ndarray, assignments: np.ndarray) -> dict:
        """NMI of the clusters with each data attribute, and each cluster's size and attribute shares."""
        labels = {name: data.table.column(name)[rows] for name in data.attributes}
        composition = [
            {
                "cluster": cluster,
                "size": int((assignments == cluster).sum()),
                **{f"share_{name}": float(values[assignments == cluster].mean()) for name, values in labels.items()},
            }
            for cluster in range(self.num_clusters)
            if (assignments == cluster).any()
        ]
        nmi = {name: float(normalized_mutual_info_score(values, assignments)) for name, values in labels.items()}
        return {"nmi": nmi, "clusters": composition}

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
        optimizer = torch.optim.AdamW(
            trainable, lr=self.hparams["learning_rate"], weight_decay=self.hparams["weight_decay"]
        )
        warmup = max(1, self.hparams["warmup_steps"])
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -------------------------------------------------------------------------------------------- sampling

    def on_test_start(self) -> None:
        """Solves the target cluster weights (the clusters file, the classifier, the configured targets)."""
        super().on_test_start()
        self._draw_weights = self.solve_target_weights() if self.cluster_distribution == "target" else None

    def on_predict_start(self) -> None:
        """Solves the target cluster weights (the clusters file, the classifier, the configured targets)."""
        super().on_predict_start()
        self._draw_weights = self.solve_target_weights() if self.cluster_distribution == "target" else None

    def draw_weights(self) -> Tensor:
        """The probability of each cluster at sampling (see ``cluster_distribution``)."""
        if self.cluster_distribution == "uniform":
            return torch.full((self.num_clusters,), 1.0 / self.num_clusters, dtype=torch.float64)
        if self.cluster_distribution == "data":
            return self.cluster_frequencies.double().cpu()
        if self._draw_weights is None:
            raise RuntimeError("SelfGuidance's target cluster weights are solved when sampling starts")
        return self._draw_weights

    def solve_target_weights(self) -> Tensor:
        """Cluster weights whose members' classifier labels carry ``target_distributions``, near the data's."""
        names = sorted(self.target_distributions)
        compositions = self.cluster_compositions(names)
        targets = [torch.as_tensor(self.target_distributions[name], dtype=torch.float64) for name in names]
        weights, reached = solve_cluster_weights(compositions, targets, self.cluster_frequencies.double().cpu())
        carried = ", ".join(
            f"{name} {[round(p, 3) for p in r.tolist()]}" for name, r in zip(names, reached, strict=True)
        )
        rank_zero_info(
            f"SelfGuidance: cluster weights {[round(w, 3) for w in weights.tolist()]} solved for the targets; "
            f"the clusters carry {carried}"
        )
        return weights

    def cluster_compositions(self, names: list[str]) -> list[Tensor]:
        """Per attribute of ``names``, the ``(K, C)`` class shares of each cluster's members, by the classifier.

        The members are those of ``clusters_file`` (at most ``labels_per_cluster`` of each, drawn with the seed), so
        a new target needs labels of a few images and no retraining.
        """
        data = self.training_data()
        data.setup("fit")
        path = self.clusters_path()
        if not path.exists():
            raise ValueError(f"Option 'clusters_file': '{path}' does not exist; cluster_distribution='target' reads it")
        clusters = KeyedRows.load(path, "clusters_file", CLUSTERS_KIND)
        clusters.check(path, "clusters_file", CLUSTERS_KIND, self.split_provenance(data))
        trained_on = self.cluster_frequencies.double().cpu()
        if not torch.allclose(cluster_frequencies(clusters.tensors["assignments"], self.num_clusters), trained_on):
            raise ValueError(
                f"Option 'clusters_file': '{path}' holds other clusters than the embedding was trained on "
                f"(their sizes differ from the checkpoint's {[round(share, 3) for share in trained_on.tolist()]})"
            )
        dataset = self.train_split(data)
        assignments = clusters.rows("assignments", torch.as_tensor(dataset.indices))
        members = labelled_members(assignments, self.num_clusters, self.hparams["labels_per_cluster"], self.seed)
        columns = [self.classifier.attribute_index(name) for name in names]

        def labels(batch: dict[str, Tensor]) -> Tensor:
            probabilities = self.classifier.predict_proba(batch["image"])
            return torch.stack([probabilities[name].argmax(dim=1) for name in names], dim=1)

        start = time.perf_counter()
        indices, predicted = sharded_pass(
            Subset(dataset, members.tolist()),
            labels,
            self.hparams["feature_batch_size"],
            self.device,
            self.trainer.global_rank,
            self.trainer.world_size,
        )
        member_clusters = clusters.rows("assignments", indices)
        compositions = [
            cluster_composition(
                member_clusters, predicted[:, offset], self.num_clusters, self.classifier.num_classes[c]
            )
            for offset, c in enumerate(columns)
        ]
        rank_zero_info(
            f"SelfGuidance: the classifier labelled {len(indices)} cluster members "
            f"in {time.perf_counter() - start:.1f} s"
            + "".join(
                f"; {name} shares per cluster {[round(float(row[-1]), 3) for row in composition]}"
                for name, composition in zip(names, compositions, strict=True)
            )
        )
        return compositions

    def init_state(self, indices: Tensor) -> SamplingState:
        """Draws each sample's cluster; the guidance's null branch keeps the neutral condition without it."""
        clusters = self.draw_classes(indices, self.draw_weights())
        condition = self.neutral_condition(len(indices))
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
