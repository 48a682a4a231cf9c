"""Lightning callbacks: evaluation, grids, generated images, progress lines, sampling time, budgets, checks."""

from lightning_fair.callbacks.backbone_check import BackboneCheck
from lightning_fair.callbacks.fairness_evaluator import FairnessEvaluator
from lightning_fair.callbacks.fit_budget import FitBudgetCheck
from lightning_fair.callbacks.generation_writer import GenerationWriter
from lightning_fair.callbacks.progress_log import ProgressLog
from lightning_fair.callbacks.sample_grid import SampleGrid
from lightning_fair.callbacks.sampling_timer import SamplingTimer

__all__ = [
    "BackboneCheck",
    "FairnessEvaluator",
    "FitBudgetCheck",
    "GenerationWriter",
    "ProgressLog",
    "SampleGrid",
    "SamplingTimer",
]
