"""Running: a run's life. Open its resources, select its rows, hand them to a backend, write
the output.

    context   the run's resources as one async context manager (lock, journal, endpoint, stop)
    rows      the one row-selection loop: render, resume, dedup; the jobs a backend sends
    execute   the Backend protocol, and driving one to the end of the run
    stats     the live counters
    stopping  the first reason to stop wins; signals ask, then insist
    timeline  a once-a-second sample of the counters, kept in the journal
    output    the output (Parquet or batch JSONL) and its usage sidecar, in input order
    summary   the run's totals, exit code and metadata

May import: `batchrun.journal`, `batchrun.sim` (the in-process simulator preset), and the layers
below them. Backends, engines and views build on it.
"""
