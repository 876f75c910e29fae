"""Settings: what a run is told, declared once and validated once.

    config     RunConfig, each setting declared on its field; the job file and flags merged
    setting    how a setting is declared (flag, job-file key, check, docs), read by all of them
    checks     the checks of one setting's value
    endpoints  the endpoints of a run with several ([[endpoints]], --fallback-model)
    files      the files settings name: input and output checked, schema and tools read
    reference  docs/options.md and docs/job-file.md, generated from the declarations
    providers  the provider presets: base URL, the key's variable, quirks
    prices     prices per million tokens and the cost of a row

May import: `batchrun.data` (locations, openai_api), `batchrun.errors`.
"""
