"""batchrun: run a table of prompts through any OpenAI-compatible chat-completions API."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from batchrun.errors import BatchrunError, Interrupted, JobStopped, UsageError
from batchrun.running.summary import Summary
from batchrun.settings.config import RunConfig, build_config
from batchrun.views.report import build_report as report  # batchrun.report(output): the page of a run

if TYPE_CHECKING:
    from batchrun.api import run, run_async, run_dataframe

__all__ = [
    "BatchrunError", "Interrupted", "JobStopped", "RunConfig", "Summary", "UsageError",
    "build_config", "report", "run", "run_async", "run_dataframe",
]
__version__ = "0.1.0"
# A library logs to its own logger and leaves output to the application: without this, Python's
# last-resort handler prints a bare "stop" on stderr when a Python caller's run stops on a budget.
# The CLI configures real handlers (views.logs).
logging.getLogger("batchrun").addHandler(logging.NullHandler())
# The running API loads on first use: a process that needs one part of the package (a Ray actor
# of a run: the limiter, the ledger, a sender) then imports that part, not pandas and aiohttp.
_API = ("run", "run_async", "run_dataframe")


def __getattr__(name: str) -> Any:
    """`run`, `run_async` and `run_dataframe`, imported on first use (PEP 562)."""
    if name not in _API:
        raise AttributeError(f"module 'batchrun' has no attribute {name!r}")
    from batchrun import api

    return getattr(api, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
