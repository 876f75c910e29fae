"""Settings: what a run is told, declared once and validated once.

    config     RunConfig, the job file and flags merged, where the key comes from
    providers  the provider presets: base URL, the key's variable, quirks
    prices     prices per million tokens and the cost of a row

May import: `batchrun.data` (locations), `batchrun.errors`.
"""
