"""The Ray Data engine: the same run spread over a Ray cluster, under one limit for the cluster.

    ds = ray.data.read_parquet("s3://lake/reviews/").filter(lambda r: r["lang"] == "en")
    answered = batchrun.ray.process(ds, model="gpt-4o-mini", template="Summarize: {text}",
                                    rpm=5000, workers=8)
    answered.write_parquet("s3://lake/summaries/")

Modules: `limits` (the limiter actor and the workers' leases), `ledger` (the journal actor and
the workers' group commit), `worker` (the sender actor in `map_batches`), `backend` (the CLI's
`--engine ray`), `dataset` (an output folder written by Ray Data), `install` (whether Ray is
installed). Ray is an optional extra (`pip install 'batchrun[ray]'`, see `docs/ray.md`); nothing
outside this package imports it, and nothing here reaches into its private modules.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from batchrun.errors import UsageError
from batchrun.ray.backend import sending, start_actors
from batchrun.ray.install import load
from batchrun.settings.config import build_config
from batchrun.settings.keys import Secret, check_transport, resolve_key, resolve_keys


def process(ds: Any, *, key: Secret | str | None = None, journal: str | Path | None = None,
            **options: Any) -> Any:
    """`ds` with the result columns of the output added, as a lazy `ray.data.Dataset`.

    `options` are the settings of a job by name, as for `batchrun.run_dataframe` (``model=``,
    ``template=``, ``rpm=``, ``workers=``, ...). Rows are sent when the dataset is consumed
    (``write_parquet``, ``iter_batches``, ``materialize``), by `workers` sender actors under one
    limiter for all of them. With `journal` (a file path) answers are kept there, so running the
    pipeline again sends only what is not answered yet; without it they are kept for the life of
    the dataset. A job-wide stop (bad key, no credits, budget) fails the dataset's execution with
    the stop's message. With ``endpoints=`` or ``fallback_models=`` the rows go to several
    endpoints, each under a limiter of its own (an ``endpoint`` column says which answered).
    """
    ray = load()

    for name in ("input", "output"):
        if name in options:
            raise TypeError(f"process() takes its rows from ds and returns them; no {name}=")
    with tempfile.TemporaryDirectory(prefix="batchrun-") as tmp:
        # Input and output are the dataset; the config needs paths, which nothing reads here.
        config = build_config(None, {**options, "input": str(Path(tmp) / "dataset"),
                                     "output": str(Path(tmp) / "dataset.parquet")})
    if any(e.provider == "simulator" and not e.base_url for e in config.endpoints) or (
            config.provider == "simulator" and not config.base_url):
        raise UsageError("process() needs base_url= for the simulator (batchrun simulate)")
    secret = Secret(key) if isinstance(key, str) else key
    if config.endpoints:  # each endpoint's key is its own, from its api_key_env
        if secret is not None:
            raise TypeError("process() with endpoints= or fallback_models= takes each "
                            "endpoint's key from its environment variable; no key=")
        keys = resolve_keys(config)
    else:
        keys = {}
        if secret is None:
            secret = resolve_key(config)
        check_transport(config, secret)
    if not ray.is_initialized():
        ray.init()
    ledger, limiters = start_actors(config, Path(journal) if journal is not None else None)
    return sending(ds, config, secret, config.base_url, limiters, ledger,
                   columns=list(ds.schema().names), answers=True, keys=keys)
