"""Lightning callbacks: evaluation, sample grids, writing generated images, progress lines, sampling time."""

from lightning_fair.callbacks.fairness_evaluator import FairnessEvaluator
from lightning_fair.callbacks.generation_writer import GenerationWriter
from lightning_fair.callbacks.progress_log import ProgressLog
from lightning_fair.callbacks.sample_grid import SampleGrid
from lightning_fair.callbacks.sampling_timer import SamplingTimer

__all__ = ["FairnessEvaluator", "GenerationWriter", "ProgressLog", "SampleGrid", "SamplingTimer"]
