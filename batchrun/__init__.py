"""batchrun: run a table of prompts through any OpenAI-compatible chat-completions API."""

from __future__ import annotations

from .api import run, run_async, run_dataframe
from .config import RunConfig, build_config
from .errors import BatchrunError, Interrupted, JobStopped, UsageError
from .report import build_report as report  # batchrun.report(output): the page of a run
from .summary import Summary

__all__ = [
    "BatchrunError", "Interrupted", "JobStopped", "RunConfig", "Summary", "UsageError",
    "build_config", "report", "run", "run_async", "run_dataframe",
]
__version__ = "0.1.0"
