"""The journal: the embedded SQLite file beside an output that makes runs durable and resumable.

    database    the Journal (results, rows, meta, timeline), its lock and group commit
    lookups     what planning asks the journal, key by key
    readback    a run's results by input row, for the output, its sidecar and `status`
    checkpoint  the WAL copied into the database on a thread of its own
    batches     the record of Batch API submissions and the keys each one holds
    former      journals older versions named as another output's, found and moved
    migrate     the columns added since older versions: added in place, or shown as NULL to readers

May import: `batchrun.protocol`, `batchrun.settings`, `batchrun.data`, `batchrun.errors`.
"""
