"""Comparing debiasing methods on one protocol: runs, rows and tables."""

from lightning_fair.report.runs import MethodRun, Protocol, run_method
from lightning_fair.report.tables import markdown_table

__all__ = ["MethodRun", "Protocol", "markdown_table", "run_method"]
