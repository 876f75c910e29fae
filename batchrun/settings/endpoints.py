"""Endpoints: the places one run may send a row to (`[[endpoints]]`, `--fallback-model`).

    config.endpoints                       # () for a run with one endpoint (the flags describe it)
    config.at(endpoint)                    # the RunConfig one endpoint sends with

A run without `[[endpoints]]` and `--fallback-model` has one endpoint, described by the flags and
the job file's [provider] and [request] sections, and `config.endpoints` is empty. With them,
each `Endpoint` holds its own base URL, model, key variable and limits (the run's `--rpm`,
`--tpm` and `--concurrency` are each endpoint's defaults); pool endpoints share the rows, and
fallback endpoints (`fallback = true`) get only rows that failed elsewhere, in their order.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """One endpoint of a run, its defaults filled in: where, which model, which key, how fast."""

    name: str  # shown in the output's `endpoint` column, the sidecar, status and the report
    base_url: str
    provider: str | None = None
    model: str | None = None
    api_key_env: str | None = None  # the *name* of the variable holding its key
    rpm: float | None = None
    tpm: float | None = None
    concurrency: int = 16
    fallback: bool = False  # gets only rows that failed on the endpoints before it

