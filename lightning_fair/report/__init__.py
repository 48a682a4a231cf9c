"""Comparing debiasing methods on one protocol: runs, rows and tables."""

from lightning_fair.report.runs import MethodRun, Protocol, SharedParts, run_method, time_ratios
from lightning_fair.report.tables import markdown_table

__all__ = ["MethodRun", "Protocol", "SharedParts", "markdown_table", "run_method", "time_ratios"]
