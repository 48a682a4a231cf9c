"""Distribution Guidance ("Balancing Act", Parihar et al., CVPR 2024) and its per-sample h-space baseline."""

from __future__ import annotations

import dataclasses
import functools
from abc import abstractmethod
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_fair.classifiers import load_classifier
from lightning_fair.diffusion import SamplerConfig, SamplingState, Step, ddim_inversion, sample_generators
from lightning_fair.diffusion.seeding import CONDITION_STREAM, per_sample_choice, per_sample_randn, training_generators
from lightning_fair.methods.adp import AttributeDistributionPredictor
from lightning_fair.methods.base import DebiasingMethod
from lightning_fair.methods.conditions import Prompts
from lightning_fair.methods.scale_search import DEFAULT_SCALES, ScaleSearch, calibrate, fit_ends_here
from lightning_fair.metrics import GroupedAccuracy, validate_distribution
from lightning_fair.utils.distributed import sum_over_processes
from lightning_fair.utils.files import write_csv_atomically
from lightning_fair.utils.options import check_ranges
from lightning_fair.utils.run_folder import run_folder

ACCURACY_FILE = "adp_accuracy.csv"
SCALE_CURVE, CURVE = "guidance_scale_curve", ("png", "csv")
OFFICIAL_SAMPLER = SamplerConfig(eta=1.0)  # the official code samples with stochastic DDIM


def official_sampler(sampler: SamplerConfig | dict[str, Any] | None) -> SamplerConfig:
    """``sampler`` with the official settings (``eta`` 1) wherever a dict or ``None`` leaves them out."""
    if sampler is None:
        return OFFICIAL_SAMPLER
    if isinstance(sampler, dict):
        return dataclasses.replace(OFFICIAL_SAMPLER, **sampler)
    return sampler


class HSpaceGuidance(DebiasingMethod):
    """Guidance on the h-space of the frozen UNet by Attribute Distribution Predictors (ADPs), pixel or latent.

    ``fit`` trains one :class:`AttributeDistributionPredictor` per attribute of ``target_distributions``; only the
    ADPs train. Their labels are pseudo-labels of the ``classifier`` on the training images (no ground-truth
    attribute is read), and h (the UNet's mid-block output, read by a forward hook) is taken from those images
    (their VAE latents on a latent backbone) noised to each sampler timestep by the forward process
    (``h_source="noised"``, default) or from a deterministic DDIM inversion of them (``"inversion"``, the paper's
    choice; one UNet call per step and image), under the neutral condition (null label or neutral prompt).
    The ADPs are trained with cross-entropy on their logits divided
    by the temperature, the same tempered softmax the guidance averages, so that the batch mean of those
    probabilities estimates the batch's attribute distribution (the official training script is not public;
    its guidance divides by 8). The validation split reports
    each ADP's accuracy at every timestep (logged, and written to ``adp_accuracy.csv`` in the log folder).

    At sampling, from step ``first_guided_step`` on (the official code skips the first, t = T), h of the batch is
    moved by one gradient step on the subclass's per-attribute :meth:`guidance_losses`: with the official schedule,
    ``h <- h - step_size * beta_t**beta_exponent * d(loss_weight * sum_a scale_a * loss_a)/dh``; eps is then
    decoded from the edited h in the same UNet call. The gradient is taken on h through the ADP heads only, never
    through the UNet. With the sampler's classifier-free guidance (text-to-image backbones) the edit sees the h of
    both halves of the batched ``[conditional; null]`` call and moves both, as the official Stable Diffusion code.

    The right scale depends on the model, the head and the batch size (the official 15 suits its 256x256 model and
    batches of 100). With ``guidance_scale: null`` the end of ``fit`` (its last epoch, by ``max_epochs`` or
    ``max_steps``) calibrates it, one value for every attribute: ``calibration_samples`` samples (their own seed,
    not the evaluated samples') at each of ``calibration_scales``, labelled by the ``classifier``; of the scales whose
    largest FD to the target is within twice an exact sampler's FD at that sample count, the one whose samples are
    closest to the real validation images (``fid_cls``, the quality cost), else the one of least FD, with a warning.
    The choice and why are logged, the curve is written as ``guidance_scale_curve.png``/``.csv`` and the scale is kept
    in the checkpoint (a number given later replaces it).

    Args:
        backbone: a diffusers folder or shipped model name.
        classifier: an ``AttributeClassifier`` (checkpoint, folder or shipped name) giving the pseudo-labels.
        target_distributions: the target distribution of each guided attribute, e.g. ``{"Male": [0.5, 0.5]}``.
        sampler: settings of the sampling loop (default: DDIM with ``eta`` 1, the official sampler).
        seed: seed of the run.
        prompts: the neutral prompt on a text-to-image backbone.
        head: ADP heads, ``linear`` (official) or ``mlp``.
        hidden_features: hidden width of ``mlp`` heads.
        temperature: softmax temperature of the ADP at guidance time (official: 8).
        h_source: ``noised`` (forward process) or ``inversion`` (DDIM inversion) training features.
        guidance_scale: the official ``--scale`` (15 in its script for a batch of 100): one value for every
            attribute, or one per attribute (``{"Male": 100, "Eyeglasses": 300}``), as the official code allows;
            ``None``: calibrated at the end of ``fit`` (see below).
        calibration_scales: the scales a calibration tries (default: 0 and 1 to 1000 in 1-2-5 steps).
        calibration_samples: samples per tried scale.
        calibration_batch_size: global batch of the calibration samples (default: the generation requests'
            ``batch_size``, the one the method samples with; batch-level guidance depends on it).
        loss_weight: factor of the loss before the gradient (official: 300).
        step_size: factor of the update (official: 1.5).
        beta_exponent: the update is scaled by ``beta_t ** beta_exponent`` (official: 0.05).
        first_guided_step: first denoising step (0 is the noisiest) that is guided (official: 1).
        learning_rate: AdamW learning rate of the ADPs.
        weight_decay: AdamW weight decay of the ADPs.
    """

    def __init__(
        self,
        backbone: str,
        classifier: str,
        target_distributions: dict[str, list[float]],
        sampler: SamplerConfig = OFFICIAL_SAMPLER,
        seed: int = 0,
        prompts: Prompts | None = None,
        head: Literal["linear", "mlp"] = "linear",
        hidden_features: int = 256,
        temperature: float = 8.0,
        h_source: Literal["noised", "inversion"] = "noised",
        guidance_scale: float | dict[str, float] | None = 15.0,
        loss_weight: float = 300.0,
        step_size: float = 1.5,
        beta_exponent: float = 0.05,
        first_guided_step: int = 1,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        calibration_scales: list[float] | None = None,
        calibration_samples: int = 256,
        calibration_batch_size: int | None = None,
    ) -> None:
        super().__init__(backbone=backbone, sampler=official_sampler(sampler), seed=seed, prompts=prompts)

    def configure_modules(self) -> None:
        """Loads the pseudo-labelling classifier (frozen) and builds one ADP per attribute."""
        options = self.hparams
        if not options["target_distributions"]:
            raise ValueError("Option 'target_distributions' must name at least one attribute")
        if options["h_source"] not in ("noised", "inversion"):
            raise ValueError(f"Option 'h_source' must be 'noised' or 'inversion', got {options['h_source']!r}")
        self._check_numbers()
        self.add_frozen("classifier", load_classifier(options["classifier"]))
        self.attributes = list(options["target_distributions"])
        self.attribute_columns = [
            self.classifier.attribute_index(name, "target_distributions") for name in self.attributes
        ]
        self.targets = {
            name: validate_distribution(
                distribution, self.classifier.num_classes[column], f"target_distributions.{name}"
            ).float()
            for (name, distribution), column in zip(
                options["target_distributions"].items(), self.attribute_columns, strict=True
            )
        }
        given = options["guidance_scale"]
        self.guidance_scales = {} if given is None else self._per_attribute_scales(given)
        self.scale_search: ScaleSearch | None = None
        timesteps = self.sampler.timesteps
        h_shape = self._h_shape()
        self.predictors = nn.ModuleDict(
            {
                name: AttributeDistributionPredictor(
                    h_shape, len(target), timesteps, options["head"], options["hidden_features"]
                )
                for name, target in self.targets.items()
            }
        )
        self.val_accuracy = nn.ModuleDict({name: GroupedAccuracy(len(timesteps)) for name in self.attributes})
        self.accuracy_table: dict[str, list[float]] = {}

    def setup(self, stage: str) -> None:
        """Checks the training images against the backbone and tells the classifier their view."""
        super().setup(stage)
        if stage in ("fit", "validate"):
            data = self.image_data()
            if data is None:
                self.classifier.expect_inputs(self.backbone.center_crop_fraction, "the training images")
            else:
                self.classifier.expect_inputs(data.center_crop_fraction, f"the training images of '{data.root}'")

    def evaluation_targets(self) -> dict[str, list[float]]:
        """``target_distributions``: every guided attribute."""
        return {name: list(target) for name, target in self.hparams["target_distributions"].items()}

    def _check_numbers(self) -> None:
        """Refuses numeric options outside their range (a negative scale would push away from the target)."""
        options = self.hparams
        check_ranges(
            positive={
                name: options[name]
                for name in (
                    "temperature",
                    "hidden_features",
                    "learning_rate",
                    "calibration_samples",
                    "calibration_batch_size",
                )
            },
            non_negative={
                name: options[name] for name in ("loss_weight", "step_size", "beta_exponent", "weight_decay")
            },
        )
        steps = len(self.sampler.timesteps)
        if not 0 <= options["first_guided_step"] < steps:
            raise ValueError(
                f"Option 'first_guided_step' must lie in 0..{steps - 1} (the sampler's num_inference_steps is "
                f"{steps}: a later first step guides nothing), got {options['first_guided_step']}"
            )

    def _per_attribute_scales(self, scale: float | dict[str, float]) -> dict[str, float]:
        """``guidance_scale`` as one non-negative value per guided attribute; a dict must name exactly those."""
        if not isinstance(scale, dict):
            scale = dict.fromkeys(self.attributes, scale)
        elif set(scale) != set(self.attributes):
            raise ValueError(
                f"Option 'guidance_scale' must give one scale per attribute of 'target_distributions' "
                f"{self.attributes}, got {sorted(scale)}"
            )
        for name, value in scale.items():
            if not value >= 0:
                raise ValueError(f"Option 'guidance_scale' must be non-negative, got {value} for {name!r}")
        return {name: float(scale[name]) for name in self.attributes}

    def _h_shape(self) -> tuple[int, ...]:
        probe = torch.zeros(1, *self.backbone.sample_shape)
        with torch.no_grad():
            h = self.backbone.h(probe, self.sampler.timesteps[0], self.neutral_condition(1))
        return tuple(h.shape[1:])

    # ----------------------------------------------------------------------------------------------- training

    def pseudo_labels(self, images: Tensor) -> dict[str, Tensor]:
        """The classifier's predicted class of each guided attribute, ``{name: (B,)}``."""
        predictions = self.classifier.predict(images)
        columns = zip(self.attributes, self.attribute_columns, strict=True)
        return {name: predictions[:, column] for name, column in columns}

    def training_features(
        self, images: Tensor, generators: list[torch.Generator] | None = None
    ) -> tuple[Tensor, Tensor]:
        """H of ``images`` at sampler timesteps and those timesteps, as ``(N, *h_shape)`` and ``(N,)``.

        ``noised``: one random sampler timestep per image (``N = B``), timestep and noise of image ``i`` drawn from
        ``generators[i]`` (one per image; needed). ``inversion``: every timestep of a DDIM inversion of each image
        (``N = S * B``, grouped by timestep).
        """
        timesteps = self.sampler.timesteps.to(images.device)
        x0 = self.backbone.encode(images)
        condition = self.neutral_condition(len(images))
        if self.hparams["h_source"] == "noised":
            choice = torch.cat([torch.randint(len(timesteps), (1,), generator=g) for g in generators])
            t = timesteps[choice.to(images.device)]
            noise = per_sample_randn(generators, tuple(x0.shape[1:]), images.device)
            return self.noised_h(x0, noise, t, condition), t
        features: list[Tensor] = []

        def keep(h: Tensor) -> Tensor:
            features.append(h.float())
            return h

        def eps_reading_h(x: Tensor, t: Tensor) -> Tensor:
            return self.backbone.eps(x, t, condition, h_edit=keep)

        ascending = timesteps.flip(0)
        ddim_inversion(eps_reading_h, x0, ascending, self.sampler.scheduler.alphas_cumprod)
        steps = [t.expand(len(images)) for t in ascending]
        return torch.cat(features), torch.cat(steps)

    def noised_h(self, x0: Tensor, noise: Tensor, t: Tensor, condition: Tensor | None) -> Tensor:
        """H (float32) of ``x0`` noised by the forward process to timesteps ``t`` (``(B,)``), under ``condition``."""
        return self.backbone.h(self.sampler.add_noise(x0, noise, t), t, condition).float()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy of every ADP against the classifier's pseudo-labels.

        The timestep and noise of each image depend only on ``(seed, epoch, image index)``, so a resumed fit draws
        what the uninterrupted one would have, whatever the batches or the number of processes.
        """
        generators = training_generators(self.seed, self.current_epoch, batch["index"])
        with torch.no_grad():
            labels = self.pseudo_labels(batch["image"])
            h, t = self.training_features(batch["image"], generators)
        repeats = len(h) // len(batch["image"])
        temperature = self.hparams["temperature"]
        losses = {
            name: F.cross_entropy(self.predictors[name](h, t) / temperature, labels[name].repeat(repeats))
            for name in self.attributes
        }
        for name, loss in losses.items():
            self.log(f"train/loss_{name}", loss, prog_bar=len(losses) == 1)
        return torch.stack(list(losses.values())).sum()

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Accuracy of every ADP head at its own timestep (fixed noise per batch)."""
        images = batch["image"]
        labels = self.pseudo_labels(images)
        timesteps = self.sampler.timesteps.to(images.device)
        if self.hparams["h_source"] == "inversion":
            features = [self.training_features(images)]
        else:
            x0 = self.backbone.encode(images)
            generator = torch.Generator().manual_seed(self.seed * 100_003 + batch_idx)
            noise = torch.randn(x0.shape, generator=generator).to(images.device)
            condition = self.neutral_condition(len(images))
            features = []
            for t in timesteps:
                t = t.expand(len(images))
                features.append((self.noised_h(x0, noise, t, condition), t))
        for h, t in features:
            repeats = len(h) // len(images)
            step = self.predictors[self.attributes[0]].head_index(t)
            for name in self.attributes:
                predictions = self.predictors[name](h, t).argmax(dim=1)
                self.val_accuracy[name].update(predictions, labels[name].repeat(repeats), step)

    def on_validation_epoch_end(self) -> None:
        """Logs each ADP's mean accuracy over timesteps and keeps the per-timestep table."""
        for name in self.attributes:
            per_step = self.val_accuracy[name].compute()
            self.val_accuracy[name].reset()
            self.accuracy_table[name] = per_step.tolist()
            self.log(f"val/acc_{name}", per_step.nanmean(), sync_dist=False)

    def fit_diagnostics(self) -> list[Path]:
        """``adp_accuracy.csv``: each ADP's validation accuracy per timestep; the scale search's curve if it ran."""
        folder = run_folder(self.trainer)
        searched = [] if self.hparams["guidance_scale"] is not None else [folder / f"{SCALE_CURVE}.{s}" for s in CURVE]
        return [folder / ACCURACY_FILE, *searched]

    # ------------------------------------------------------------------------------------ scale calibration

    def on_train_epoch_end(self) -> None:
        """At the end of the last epoch, calibrates ``guidance_scale`` when it is ``None`` (see the class docstring)."""
        if self.hparams["guidance_scale"] is None and fit_ends_here(self.trainer, self.current_epoch, self.global_step):
            options = self.hparams
            self.scale_search = calibrate(
                self,
                "guidance_scale",
                lambda scale: setattr(self, "guidance_scales", dict.fromkeys(self.attributes, scale)),
                list(options["calibration_scales"] or DEFAULT_SCALES),
                options["calibration_samples"],
                options["calibration_batch_size"],
                self.targets,
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also keeps a calibrated ``guidance_scale``."""
        super().on_save_checkpoint(checkpoint)
        if self.hparams["guidance_scale"] is None and self.guidance_scales:
            checkpoint["lightning_fair"]["guidance_scale"] = next(iter(self.guidance_scales.values()))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Takes the checkpoint's calibrated ``guidance_scale`` unless one is given."""
        super().on_load_checkpoint(checkpoint)
        calibrated = checkpoint["lightning_fair"].get("guidance_scale")
        if self.hparams["guidance_scale"] is None and calibrated is not None:
            self.guidance_scales = dict.fromkeys(self.attributes, float(calibrated))

    def on_fit_end(self) -> None:
        """Writes the last per-timestep validation accuracy to ``adp_accuracy.csv`` in the log folder."""
        folder = run_folder(self.trainer)
        if not self.trainer.is_global_zero or not self.accuracy_table:
            return
        rows = [
            [step, t, *(f"{self.accuracy_table[name][step]:.4f}" for name in self.attributes)]
            for step, t in enumerate(self.sampler.timesteps.tolist())
        ]
        write_csv_atomically(folder / ACCURACY_FILE, ["step_index", "timestep", *self.attributes], rows)
        summary = ", ".join(
            f"{name} {min(values):.3f}..{max(values):.3f}" for name, values in self.accuracy_table.items()
        )
        rank_zero_info(f"ADP validation accuracy over timesteps: {summary} ({folder / ACCURACY_FILE})")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over the ADPs only."""
        return torch.optim.AdamW(
            self.predictors.parameters(), lr=self.hparams["learning_rate"], weight_decay=self.hparams["weight_decay"]
        )

    # ----------------------------------------------------------------------------------------------- sampling

    def probabilities(self, h: Tensor, t: Tensor) -> dict[str, Tensor]:
        """Tempered ADP probabilities of each attribute, ``{name: (B, K)}``."""
        temperature = self.hparams["temperature"]
        return {name: (self.predictors[name](h, t) / temperature).softmax(dim=1) for name in self.attributes}

    @abstractmethod
    def guidance_losses(self, h: Tensor, t: Tensor, state: SamplingState) -> dict[str, Tensor]:
        """The loss of each guided attribute whose gradient on h guides the step (differentiable in ``h``).

        ``h`` holds the batch's rows, or, under classifier-free guidance, its conditional rows followed by its null
        rows (``2B``).
        """
        raise NotImplementedError

    def edit_h(self, h: Tensor, t: Tensor, state: SamplingState) -> Tensor:
        """The h-space tensor after one gradient step on the scaled :meth:`guidance_losses` (official schedule).

        Computed in float32 whatever the UNet's precision (the backbone casts the result back).
        """
        options = self.hparams
        # Lightning samples under inference mode: the gradient on h needs a normal tensor and autograd.
        with torch.inference_mode(False), torch.enable_grad():
            h = h.detach().float().clone().requires_grad_(True)
            t = t.clone()
            losses = self.guidance_losses(h, t, state)
            loss = options["loss_weight"] * sum(self.guidance_scales[name] * losses[name] for name in self.attributes)
            (gradient,) = torch.autograd.grad(loss, h)
        beta = float(self.sampler.scheduler.betas[int(t)])
        strength = options["step_size"] * beta ** options["beta_exponent"]
        return h.detach() - strength * gradient

    def guided_eps(self, x: Tensor, step: Step, state: SamplingState) -> Tensor:
        """Eps decoded from the edited h (from ``first_guided_step`` on), in one UNet call."""
        if not self.guidance_scales:
            raise ValueError(
                f"{type(self).__name__} has guidance_scale: null and no calibrated scale: run `fit` (to its last "
                "epoch: max_epochs or max_steps), test a checkpoint of such a fit, or set guidance_scale"
            )
        if step.index < self.hparams["first_guided_step"]:
            return self.unet_eps(x, step, state)
        return self.unet_eps(x, step, state, h_edit=lambda h: self.edit_h(h, step.timestep, state))

    def guided_steps(self) -> int:
        """Number of denoising steps that are guided."""
        return max(0, len(self.sampler.timesteps) - self.hparams["first_guided_step"])


class DistributionGuidance(HSpaceGuidance):
    """Pulls the batch's predicted attribute distribution to a target (Parihar et al., CVPR 2024).

    At each guided step the batch's distribution ``p_hat = mean_i softmax(ADP_t(h_i) / T)`` is compared with the
    target by ``loss`` (``chi2``: ``sum_k (p_hat_k - p_k)^2 / p_k``, the official default; or ``kl``:
    ``KL(p_hat || p)``); h moves down the gradient of the losses weighted by each attribute's scale (see
    :class:`HSpaceGuidance`).

    ``p_hat`` is taken over the **global** batch of all processes: the other processes' sums enter as constants,
    so each process gets the exact gradient for its own samples, and 2 processes with B/2 samples each get the
    same guidance as 1 process with B (the official code estimates it per GPU). The strength depends on the
    global batch size (``guidance_scale`` 15 is the official value for a batch of 100).

    Args:
        loss: ``chi2`` or ``kl``.
        **others: see :class:`HSpaceGuidance`.
    """

    name = "distribution_guidance"

    def __init__(
        self,
        backbone: str,
        classifier: str,
        target_distributions: dict[str, list[float]],
        sampler: SamplerConfig = OFFICIAL_SAMPLER,
        seed: int = 0,
        prompts: Prompts | None = None,
        loss: Literal["chi2", "kl"] = "chi2",
        head: Literal["linear", "mlp"] = "linear",
        hidden_features: int = 256,
        temperature: float = 8.0,
        h_source: Literal["noised", "inversion"] = "noised",
        guidance_scale: float | dict[str, float] | None = 15.0,
        loss_weight: float = 300.0,
        step_size: float = 1.5,
        beta_exponent: float = 0.05,
        first_guided_step: int = 1,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        calibration_scales: list[float] | None = None,
        calibration_samples: int = 256,
        calibration_batch_size: int | None = None,
    ) -> None:
        if loss not in ("chi2", "kl"):
            raise ValueError(f"Option 'loss' must be 'chi2' or 'kl', got {loss!r}")
        super().__init__(
            backbone=backbone,
            classifier=classifier,
            target_distributions=target_distributions,
            sampler=sampler,
            seed=seed,
            prompts=prompts,
            head=head,
            hidden_features=hidden_features,
            temperature=temperature,
            h_source=h_source,
            guidance_scale=guidance_scale,
            loss_weight=loss_weight,
            step_size=step_size,
            beta_exponent=beta_exponent,
            first_guided_step=first_guided_step,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            calibration_scales=calibration_scales,
            calibration_samples=calibration_samples,
            calibration_batch_size=calibration_batch_size,
        )
        for name, target in self.targets.items():
            if (target <= 0).any():
                raise ValueError(
                    f"'target_distributions.{name}' must be positive for the {loss} loss, got {target.tolist()}"
                )

    def global_distributions(self, probabilities: dict[str, Tensor]) -> dict[str, Tensor]:
        """``p_hat`` of each attribute over the global batch, differentiable in this process's probabilities."""
        local = [p.sum(dim=0) for p in probabilities.values()]
        batch = next(iter(probabilities.values())).new_tensor([len(next(iter(probabilities.values())))])
        local_total = torch.cat([*(part.detach() for part in local), batch])
        others = sum_over_processes(local_total) - local_total
        sizes = [len(part) for part in local]
        count = batch + others[-1]
        offsets = others[:-1].split(sizes)
        return {name: (part + offset) / count for name, part, offset in zip(probabilities, local, offsets, strict=True)}

    def guidance_losses(self, h: Tensor, t: Tensor, state: SamplingState) -> dict[str, Tensor]:
        """Chi-square (or KL) distance of the global batch's predicted distribution to the target, per attribute."""
        losses = {}
        for name, p_hat in self.global_distributions(self.probabilities(h, t)).items():
            target = self.targets[name].to(h.device)
            if self.hparams["loss"] == "chi2":
                losses[name] = ((p_hat - target) ** 2 / target).sum()
            else:
                losses[name] = (p_hat * (p_hat.clamp(min=1e-12) / target).log()).sum()
        return losses

    def join_empty_batch(self) -> None:
        """Takes part in each guided step's sum over processes with an empty share."""
        width = sum(len(target) for target in self.targets.values()) + 1
        for _ in range(self.guided_steps()):
            sum_over_processes(torch.zeros(width, device=self.device))


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
        return SamplingState(indices=indices, condition=self.neutral_condition(len(indices)), conditions=conditions)

    def guidance_losses(self, h: Tensor, t: Tensor, state: SamplingState) -> dict[str, Tensor]:
        """Minus the probability of each sample's assigned class, summed over samples, per attribute."""
        losses = {}
        repeats = len(h) // len(state.indices)  # 2 under classifier-free guidance: both halves move
        for name, probabilities in self.probabilities(h, t).items():
            classes = state.conditions[name].repeat(repeats).view(-1, 1)  # a normal tensor under inference mode
            losses[name] = -probabilities.gather(1, classes).sum()
        return losses
