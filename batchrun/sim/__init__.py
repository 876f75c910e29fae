"""A strict, deterministic OpenAI-compatible server on loopback, scriptable per test.

Modules: `config` (SimConfig, Account, Step, the script), `validate` (requests checked as OpenAI
does), `answers` (deterministic answers), `usage` (cached and reasoning tokens, prices, cost),
`billing` (answers with their usage, billed), `windows` (RPM/TPM windows and headers), `accounts`
(keys with limits and credits), `faults` (error bodies, random faults), `stats` (counters, per
key), `server` (the aiohttp app), `harness` (running it in a block, a thread or a process), `flags`
(`batchrun simulate`'s flag values), and the Batch API: `files` (uploads and output files),
`batchfile` (input validation), `batches` (a batch's life), `batch_api` (their routes).
"""

from __future__ import annotations

from batchrun.sim.answers import answer_text, expected_answer
from batchrun.sim.config import Account, SimConfig, Step
from batchrun.sim.harness import SimulatorHandle, SimulatorThread, running, serve
from batchrun.sim.server import DEFAULT_MODELS, Simulator
from batchrun.sim.stats import KeyStats, SimStats
from batchrun.sim.usage import CACHE_BLOCK, price_of
from batchrun.sim.validate import CONTEXT_LIMIT
from batchrun.sim.windows import DEFAULT_MAX_TOKENS, format_duration

__all__ = [
    "CACHE_BLOCK",
    "CONTEXT_LIMIT",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_MODELS",
    "Account",
    "KeyStats",
    "SimConfig",
    "SimStats",
    "Simulator",
    "SimulatorHandle",
    "SimulatorThread",
    "Step",
    "answer_text",
    "expected_answer",
    "format_duration",
    "price_of",
    "running",
    "serve",
]
