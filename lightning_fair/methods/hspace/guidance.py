"""H-space guidance by Attribute Distribution Predictors: their training on pseudo-labels and the edit of h."""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_fair.classifiers import load_classifier
from lightning_fair.diffusion import SamplerConfig, SamplingState, Step
from lightning_fair.methods.base import DebiasingMethod
from lightning_fair.methods.conditions import Prompts
from lightning_fair.methods.hspace.predictor import AttributeDistributionPredictor
from lightning_fair.methods.hspace.training import ACCURACY_FILE, PredictorTraining
from lightning_fair.methods.lifecycle.calibration import DEFAULT_SCALES, ScaleCalibration, ScaleSearch
from lightning_fair.metrics import GroupedAccuracy, validate_distribution
from lightning_fair.utils.options import check_ranges
from lightning_fair.utils.run_folder import run_folder

OFFICIAL_SAMPLER = SamplerConfig(eta=1.0)  # the official code samples with stochastic DDIM


def official_sampler(sampler: SamplerConfig | dict[str, Any] | None) -> SamplerConfig:
    """``sampler`` with the official settings (``eta`` 1) wherever a dict or ``None`` leaves them out."""
    if sampler is None:
        return OFFICIAL_SAMPLER
    if isinstance(sampler, dict):
        return dataclasses.replace(OFFICIAL_SAMPLER, **sampler)
    return sampler


class HSpaceGuidance(PredictorTraining, DebiasingMethod):
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
        calibration_samples: samples per tried scale (default: the generation requests'
            ``calibration_samples``).
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
        calibration_samples: int | None = None,
        calibration_batch_size: int | None = None,
    ) -> None:
        self.classifier_reference = classifier
        self.target_distributions = target_distributions
        self.head = head
        self.hidden_features = hidden_features
        self.temperature = temperature
        self.h_source = h_source
        self.guidance_scale = guidance_scale
        self.loss_weight = loss_weight
        self.step_size = step_size
        self.beta_exponent = beta_exponent
        self.first_guided_step = first_guided_step
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.calibration = None
        if guidance_scale is None:
            scales = list(calibration_scales or DEFAULT_SCALES)
            self.calibration = ScaleCalibration("guidance_scale", scales, calibration_samples, calibration_batch_size)
        self.calibration_samples = calibration_samples
        self.calibration_batch_size = calibration_batch_size
        super().__init__(backbone=backbone, sampler=official_sampler(sampler), seed=seed, prompts=prompts)

    def configure_modules(self) -> None:
        """Loads the pseudo-labelling classifier (frozen) and builds one ADP per attribute."""
        if not self.target_distributions:
            raise ValueError("Option 'target_distributions' must name at least one attribute")
        if self.h_source not in ("noised", "inversion"):
            raise ValueError(f"Option 'h_source' must be 'noised' or 'inversion', got {self.h_source!r}")
        self._check_numbers()
        self.add_frozen("classifier", load_classifier(self.classifier_reference))
        self.attributes = list(self.target_distributions)
        self.attribute_columns = [
            self.classifier.attribute_index(name, "target_distributions") for name in self.attributes
        ]
        self.targets = {
            name: validate_distribution(
                distribution, self.classifier.num_classes[column], f"target_distributions.{name}"
            ).float()
            for (name, distribution), column in zip(
                self.target_distributions.items(), self.attribute_columns, strict=True
            )
        }
        given = self.guidance_scale
        self.guidance_scales = {} if given is None else self._per_attribute_scales(given)
        self.scale_search: ScaleSearch | None = None
        timesteps = self.sampler.timesteps
        h_shape = self._h_shape()
        self.predictors = nn.ModuleDict(
            {
                name: AttributeDistributionPredictor(h_shape, len(target), timesteps, self.head, self.hidden_features)
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
        return {name: list(target) for name, target in self.target_distributions.items()}

    def _check_numbers(self) -> None:
        """Refuses numeric options outside their range (a negative scale would push away from the target)."""
        check_ranges(
            positive={
                "temperature": self.temperature,
                "hidden_features": self.hidden_features,
                "learning_rate": self.learning_rate,
                "calibration_samples": self.calibration_samples,
                "calibration_batch_size": self.calibration_batch_size,
            },
            non_negative={
                "loss_weight": self.loss_weight,
                "step_size": self.step_size,
                "beta_exponent": self.beta_exponent,
                "weight_decay": self.weight_decay,
            },
        )
        steps = len(self.sampler.timesteps)
        if not 0 <= self.first_guided_step < steps:
            raise ValueError(
                f"Option 'first_guided_step' must lie in 0..{steps - 1} (the sampler's num_inference_steps is "
                f"{steps}: a later first step guides nothing), got {self.first_guided_step}"
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

    def fit_diagnostics(self) -> list[Path]:
        """``adp_accuracy.csv``: each ADP's validation accuracy per timestep; the scale search's curve if it ran."""
        folder = run_folder(self.trainer)
        searched = [] if self.calibration is None else self.calibration.diagnostics(folder)
        return [folder / ACCURACY_FILE, *searched]

    def on_train_epoch_end(self) -> None:
        """At the end of the last epoch, calibrates ``guidance_scale`` when it is ``None`` (see the class docstring)."""
        if self.calibration is not None:
            search = self.calibration.at_epoch_end(self, self.set_guidance_scale, self.targets)
            self.scale_search = search or self.scale_search

    def set_guidance_scale(self, scale: float) -> None:
        """Sets one guidance scale for every attribute."""
        self.guidance_scales = dict.fromkeys(self.attributes, scale)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Also keeps a calibrated ``guidance_scale``."""
        super().on_save_checkpoint(checkpoint)
        if self.calibration is not None and self.guidance_scales:
            self.calibration.record(checkpoint, next(iter(self.guidance_scales.values())))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Takes the checkpoint's calibrated ``guidance_scale`` unless one is given."""
        super().on_load_checkpoint(checkpoint)
        calibrated = None if self.calibration is None else self.calibration.restored(checkpoint)
        if calibrated is not None:
            self.set_guidance_scale(calibrated)

    # ----------------------------------------------------------------------------------------------- sampling

    def probabilities(self, h: Tensor, t: Tensor) -> dict[str, Tensor]:
        """Tempered ADP probabilities of each attribute, ``{name: (B, K)}``."""
        return {name: (self.predictors[name](h, t) / self.temperature).softmax(dim=1) for name in self.attributes}

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
        # Lightning samples under inference mode: the gradient on h needs a normal tensor and autograd.
        with torch.inference_mode(False), torch.enable_grad():
            h = h.detach().float().clone().requires_grad_(True)
            t = t.clone()
            losses = self.guidance_losses(h, t, state)
            loss = self.loss_weight * sum(self.guidance_scales[name] * losses[name] for name in self.attributes)
            (gradient,) = torch.autograd.grad(loss, h)
        beta = float(self.sampler.scheduler.betas[int(t)])
        strength = self.step_size * beta**self.beta_exponent
        return h.detach() - strength * gradient

    def guided_eps(self, x: Tensor, step: Step, state: SamplingState) -> Tensor:
        """Eps decoded from the edited h (from ``first_guided_step`` on), in one UNet call."""
        if not self.guidance_scales:
            raise ValueError(
                f"{type(self).__name__} has guidance_scale: null and no calibrated scale: run `fit` (to its last "
                "epoch: max_epochs or max_steps), test a checkpoint of such a fit, or set guidance_scale"
            )
        if step.index < self.first_guided_step:
            return self.unet_eps(x, step, state)
        return self.unet_eps(x, step, state, h_edit=lambda h: self.edit_h(h, step.timestep, state))

    def guided_steps(self) -> int:
        """Number of denoising steps that are guided."""
        return max(0, len(self.sampler.timesteps) - self.first_guided_step)
