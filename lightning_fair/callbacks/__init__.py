"""Lightning callbacks: evaluation, sample grids and writing generated images."""

from lightning_fair.callbacks.fairness_evaluator import FairnessEvaluator
from lightning_fair.callbacks.generation_writer import GenerationWriter
from lightning_fair.callbacks.sample_grid import SampleGrid

__all__ = ["FairnessEvaluator", "GenerationWriter", "SampleGrid"]
