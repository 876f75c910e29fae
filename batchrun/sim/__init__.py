"""A strict, deterministic OpenAI-compatible server on loopback, scriptable per test.

Modules: `config` (SimConfig, Step, the script), `validate` (requests checked as OpenAI does),
`answers` (deterministic answers), `windows` (RPM/TPM windows and headers), `faults` (error bodies,
random faults), `stats` (counters and billing), `server` (the aiohttp app), `harness` (running it
in a block, a thread or a process), and the Batch API: `files` (uploads and output files),
`batchfile` (input validation), `batches` (a batch's life), `batch_api` (their routes).
"""

from __future__ import annotations

from batchrun.sim.answers import answer_text, expected_answer
from batchrun.sim.config import SimConfig, Step
from batchrun.sim.harness import SimulatorHandle, SimulatorThread, running, serve
from batchrun.sim.server import DEFAULT_MODELS, Simulator
from batchrun.sim.stats import SimStats
from batchrun.sim.validate import CONTEXT_LIMIT
from batchrun.sim.windows import DEFAULT_MAX_TOKENS, format_duration

__all__ = [
    "CONTEXT_LIMIT",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MODELS",
    "SimConfig",
    "SimStats",
    "Simulator",
    "SimulatorHandle",
    "SimulatorThread",
    "Step",
    "answer_text",
    "expected_answer",
    "format_duration",
    "running",
    "serve",
]
