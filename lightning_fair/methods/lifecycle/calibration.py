"""Calibration of a guidance strength: the scale that reaches the target distribution at the least quality cost."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from lightning_fair.classifiers import AttributeClassifier
from lightning_fair.data.prompt_sets import sample_indices
from lightning_fair.diffusion.seeding import seed_of
from lightning_fair.methods.lifecycle.diagnostics import curve_files, write_report
from lightning_fair.metrics.feature_distance import frechet_distance
from lightning_fair.metrics.quality import reference_features
from lightning_fair.utils.curves import write_curve
from lightning_fair.utils.distributed import gather_rows, sum_over_processes
from lightning_fair.utils.run_folder import run_folder

CALIBRATION_STREAM = 6  # the calibration samples' seed: unrelated to every sample the run is evaluated on
DEFAULT_SCALES = (0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
REFINE_STEPS = 3  # scales a search adds between two of the grid's where the target lies between them


@dataclass(frozen=True)
class ScaleSearch:
    """What a scale search measured and chose.

    Attributes:
        option: the searched option (e.g. ``guidance_scale``), for the log and the curve.
        scales: the candidate scales, ascending.
        fd: at each scale, the largest FD (L2) of a guided attribute's predicted distribution to its target.
        fid_cls: at each scale, the Fréchet distance of the samples' classifier features to the reference.
        tolerance: the FD a scale must reach (see :func:`fd_tolerance`).
        chosen: the chosen scale.
        reached: whether some scale reached the tolerance (else ``chosen`` has the smallest FD).
        reference: what ``fid_cls`` is measured against: ``val images``, or the samples of the
            smallest scale (``samples of guidance_scale 0``) when the method has no real images.
        distributions: at each scale, each guided attribute's predicted distribution.
    """

    option: str
    scales: list[float]
    fd: list[float]
    fid_cls: list[float]
    tolerance: float
    chosen: float
    reached: bool
    reference: str = "val images"
    distributions: list[dict[str, list[float]]] = field(default_factory=list)

    def write(self, folder: Path) -> list[Path]:
        """Writes ``<option>_curve.csv``, ``.png`` and ``.json`` (the choice, ``reached``) into ``folder``."""
        stem = f"{self.option}_curve"
        choice = {
            "option": self.option,
            "chosen": self.chosen,
            "reached": self.reached,
            "tolerance": self.tolerance,
            "fid_cls_reference": self.reference,
            "scales": self.scales,
            "distributions": self.distributions,
        }
        write_report(folder / f"{stem}.json", choice)
        verdict = "least fid_cls within tolerance" if self.reached else "target not reached: least FD"
        write_curve(
            folder,
            stem,
            self.option,
            self.scales,
            {"FD to target": self.fd, "fid_cls": self.fid_cls},
            self.chosen,
            f"{self.option} search: {self.chosen:g} ({verdict}; fid_cls to the {self.reference})",
            log_x=True,
            level=("tolerance", self.tolerance),
        )
        return [*curve_files(folder, stem), folder / f"{stem}.json"]

    def summary(self) -> str:
        """One line for the log: the choice and why."""
        index = self.scales.index(self.chosen)
        measured = f"FD {self.fd[index]:.4f}, fid_cls {self.fid_cls[index]:.2f} to the {self.reference}"
        if self.reached:
            return (
                f"{self.option} = {self.chosen:g} ({measured}): of the scales whose FD is within {self.tolerance:.4f} "
                "of the target, the one with the least fid_cls"
            )
        return (
            f"{self.option} = {self.chosen:g} ({measured}): no scale of {self.scales} reached FD {self.tolerance:.4f}; "
            "the one with the smallest FD (search larger scales, or train the guidance longer)"
        )


def fd_tolerance(targets: list[Tensor], num_samples: int) -> float:
    """The FD a calibrated scale must reach: twice the FD an exact sampler of the target shows on ``num_samples``.

    An exact sampler's L2 distance has ``E[FD^2] = sum_k p_k (1 - p_k) / n``; twice its root (over the guided
    attribute of largest spread) separates a scale that reached the target from one that did not, at this ``n``.
    """
    spread = max(float((target * (1 - target)).sum()) for target in targets)
    return 2.0 * math.sqrt(spread / num_samples)


def choose_scale(scales: list[float], fd: list[float], fid_cls: list[float], tolerance: float) -> tuple[float, bool]:
    """The scale with the least ``fid_cls`` among those within ``tolerance``, else the one of smallest FD."""
    within = [i for i, value in enumerate(fd) if value <= tolerance]
    if within:
        return scales[min(within, key=lambda i: (fid_cls[i], scales[i]))], True
    return scales[min(range(len(scales)), key=lambda i: (fd[i], scales[i]))], False


@contextmanager
def calibration_seed(method: torch.nn.Module) -> Iterator[None]:
    """Within this block the method's samples are drawn from the calibration seed (and its own seed after)."""
    seed = method.seed
    method.seed = seed_of(seed, CALIBRATION_STREAM)
    try:
        yield
    finally:
        method.seed = seed


@dataclass(frozen=True)
class Measurement:
    """What the calibration samples of one scale gave: each guided attribute's predicted distribution, ``fid_cls``."""

    distributions: dict[str, Tensor]
    fid_cls: float

    def fd(self, targets: dict[str, Tensor]) -> float:
        """The largest FD (L2) of a guided attribute's distribution to its target."""
        return max(float(torch.linalg.vector_norm(self.distributions[name] - targets[name].cpu())) for name in targets)

    def deviation(self, targets: dict[str, Tensor]) -> Tensor:
        """The distributions minus their targets, every attribute's in one vector."""
        return torch.cat([self.distributions[name] - targets[name].cpu() for name in targets])


def reversed_bracket(
    measured: dict[float, Measurement], best: float, targets: dict[str, Tensor]
) -> tuple[float, float] | None:
    """``best`` and the neighbouring scale on whose side the distribution has passed the target, if any.

    The deviation from the target reverses between two scales (their deviations point apart: a negative dot
    product) when stronger guidance carried the distribution past the target: a scale between them comes closer.
    """
    scales = sorted(measured)
    index = scales.index(best)
    deviation = measured[best].deviation(targets)
    for other in (index + 1, index - 1):
        if 0 <= other < len(scales) and float(deviation @ measured[scales[other]].deviation(targets)) < 0:
            low, high = sorted((best, scales[other]))
            return low, high
    return None


def bisect_scales(
    measure: Callable[[float], Measurement],
    scales: list[float],
    targets: dict[str, Tensor],
    tolerance: float,
    refine_steps: int,
) -> dict[float, Measurement]:
    """Measures every grid scale, then bisects a reversed bracket (see :func:`reversed_bracket`).

    Each added scale is the geometric midpoint of the bracket around the best scale so far (half the upper end when
    the lower is 0); the search stops when a scale is within ``tolerance`` or ``refine_steps`` scales were added.

    Returns:
        Every measured scale's measurement.
    """
    measured = {scale: measure(scale) for scale in scales}
    for _ in range(refine_steps):
        fd = {scale: measured[scale].fd(targets) for scale in sorted(measured)}
        best = min(fd, key=lambda scale: (fd[scale], scale))
        bracket = None if fd[best] <= tolerance else reversed_bracket(measured, best, targets)
        if bracket is None:
            break
        low, high = bracket
        middle = math.sqrt(low * high) if low > 0 else high / 2
        if middle in measured:
            break
        measured[middle] = measure(middle)
    return measured


def search_scale(
    method: torch.nn.Module,
    option: str,
    set_scale: Callable[[float], None],
    scales: list[float],
    num_samples: int,
    batch_size: int,
    classifier: AttributeClassifier,
    targets: dict[str, Tensor],
    reference: Tensor | None,
    refine_steps: int = REFINE_STEPS,
) -> ScaleSearch:
    """Samples ``num_samples`` calibration images at each scale and chooses one (see :func:`choose_scale`).

    Every scale sees the same calibration samples (same noise, same drawn conditions), in global batches of
    ``batch_size`` split among the processes as ``test`` splits them; the counts and features are gathered, so
    every process measures the same curve and chooses the same scale. With a prompt set, successive batches take
    successive prompts (a batch never mixes them). When no scale reaches the tolerance but the predicted
    distribution passes the target between the best scale and a neighbour (see :func:`reversed_bracket`), up to
    ``refine_steps`` scales between them are measured as well (bisection).

    Args:
        method: a :class:`~lightning_fair.methods.base.DebiasingMethod`.
        option: the searched option's name.
        set_scale: sets the method's scale.
        scales: the candidate scales.
        num_samples: calibration samples per scale.
        batch_size: the global batch size of sampling (the strength of batch-level guidance depends on it).
        classifier: predicts the guided attributes and gives the features of ``fid_cls``.
        targets: the target distribution of each guided attribute.
        reference: classifier features of real reference images; ``None``: the samples of the smallest scale (the
            quality cost is then the drift from the least guided samples).
        refine_steps: most scales measured between the grid's.
    """
    scales = sorted({float(scale) for scale in scales})
    world = method.trainer.world_size if method._trainer is not None else 1
    rank = method.trainer.global_rank if method._trainer is not None else 0
    columns = {name: classifier.attribute_index(name, "target_distributions") for name in targets}
    if not scales or scales[0] < 0:
        raise ValueError(f"Option 'calibration_scales' must list non-negative scales, got {scales}")
    against = "val images" if reference is not None else f"samples of {option} {scales[0]:g}"
    num_prompts = getattr(method, "num_prompts", 1)
    backbone = method.backbone
    generated = classifier.inputs_from(
        backbone.center_crop_fraction, f"the images of the backbone '{backbone.reference}'"
    )

    def measure(scale: float) -> Measurement:
        nonlocal reference
        set_scale(scale)
        counts = {name: torch.zeros(len(target), device=method.device) for name, target in targets.items()}
        features = []
        for number, start in enumerate(range(0, num_samples, batch_size)):
            batch = sample_indices(number % num_prompts, torch.arange(start, min(start + batch_size, num_samples)))
            share = torch.tensor_split(batch, world)[rank]
            if len(share) == 0:
                method.join_empty_batch()
                continue
            images, _ = method.sample(share)
            predictions = classifier.predict(images)
            for name, column in columns.items():
                counts[name] += torch.bincount(predictions[:, column], minlength=len(targets[name])).float()
            features.append(classifier.features(images).float())
        local = torch.cat(features) if features else torch.zeros((0, classifier.feature_dim), device=method.device)
        gathered = gather_rows(local.to(method.device)).cpu()
        reference = gathered if reference is None else reference
        distributions = {}
        for name in targets:
            total = sum_over_processes(counts[name]).cpu()
            distributions[name] = total / total.sum()
        return Measurement(distributions, float(frechet_distance(reference.double(), gathered.double())))

    tolerance = fd_tolerance(list(targets.values()), num_samples)
    with calibration_seed(method), torch.no_grad(), generated:
        measured = bisect_scales(measure, scales, targets, tolerance, refine_steps)
    scales = sorted(measured)
    fd = [measured[scale].fd(targets) for scale in scales]
    fid_cls = [measured[scale].fid_cls for scale in scales]
    chosen, reached = choose_scale(scales, fd, fid_cls, tolerance)
    distributions = [{name: measured[scale].distributions[name].tolist() for name in targets} for scale in scales]
    result = ScaleSearch(option, scales, fd, fid_cls, tolerance, chosen, reached, against, distributions)
    (rank_zero_info if reached else rank_zero_warn)(f"{type(method).__name__}: {result.summary()}")
    return result


def fit_ends_here(trainer: Trainer, epoch: int, global_step: int) -> bool:
    """Whether the training epoch ending now is a fit's last, by ``max_epochs`` or ``max_steps``."""
    by_epochs = trainer.max_epochs is not None and 0 < trainer.max_epochs <= epoch + 1
    return by_epochs or 0 < trainer.max_steps <= global_step


def calibrate(
    method: torch.nn.Module,
    option: str,
    set_scale: Callable[[float], None],
    scales: list[float],
    num_samples: int | None,
    batch_size: int | None,
    targets: dict[str, Tensor],
) -> ScaleSearch:
    """Runs :func:`search_scale` at the end of a method's ``fit``, sets and logs the choice, writes the curve.

    The method's ``classifier`` labels the samples; the quality cost is measured against the val split of the
    training images (classifier features cached beside the data) or, without training images, against the samples
    of the smallest scale; ``batch_size`` defaults to the generation requests' (the one the method samples with),
    ``num_samples`` to their ``calibration_samples``.
    """
    trainer, data = method.trainer, method.image_data()
    batch_size = batch_size or getattr(trainer.datamodule, "batch_size", None)
    num_samples = num_samples or getattr(trainer.datamodule, "calibration_samples", None)
    if batch_size is None or num_samples is None:
        raise ValueError(
            f"{type(method).__name__} calibrates '{option}' in fit with the generation requests' batch size and "
            "calibration_samples: give GenerationRequests as the data (or set the calibration's own)"
        )
    features = None
    if data is not None and trainer.is_global_zero:
        data.prepare_data()
        with method.classifier.inputs_from(data.center_crop_fraction, f"the images of '{data.root}'"):
            features = reference_features(method.classifier, data.dataset("val"), data.root / ".cache")
    reference = trainer.strategy.broadcast(features, src=0) if data is not None else None
    was_training = method.training
    method.eval()
    try:
        search = search_scale(
            method, option, set_scale, scales, num_samples, batch_size, method.classifier, targets, reference
        )
    finally:
        method.train(was_training)
    set_scale(search.chosen)
    method.log(f"calibration/{option}", search.chosen)
    folder = run_folder(trainer)
    if trainer.is_global_zero:
        search.write(folder)
    return search


@dataclass(frozen=True)
class ScaleCalibration:
    """A scale a method calibrates at the end of its ``fit`` and keeps in its checkpoint's ``lightning_fair`` record.

    Attributes:
        option: the calibrated option (e.g. ``guidance_scale``): its name in the log, the curve and the record.
        scales: the candidate scales.
        num_samples: calibration samples per scale (``None``: the generation requests' ``calibration_samples``).
        batch_size: global batch of the calibration samples (``None``: the generation requests').
    """

    option: str
    scales: list[float]
    num_samples: int | None
    batch_size: int | None

    def at_epoch_end(
        self, method: torch.nn.Module, set_scale: Callable[[float], None], targets: dict[str, Tensor]
    ) -> ScaleSearch | None:
        """Calibrates (see :func:`calibrate`) if the training epoch ending now is the fit's last."""
        if not fit_ends_here(method.trainer, method.current_epoch, method.global_step):
            return None
        return calibrate(method, self.option, set_scale, self.scales, self.num_samples, self.batch_size, targets)

    def diagnostics(self, folder: Path) -> list[Path]:
        """The files of the search in ``folder``: its curve and its choice (``.json``)."""
        return [*curve_files(folder, f"{self.option}_curve"), folder / f"{self.option}_curve.json"]

    def record(self, checkpoint: dict[str, Any], scale: float | None) -> None:
        """Keeps ``scale`` in the checkpoint's record (nothing when there is none yet)."""
        if scale is not None:
            checkpoint["lightning_fair"][self.option] = scale

    def restored(self, checkpoint: dict[str, Any]) -> float | None:
        """The scale the checkpoint's record keeps, if any."""
        scale = checkpoint["lightning_fair"].get(self.option)
        return None if scale is None else float(scale)
