"""Data: where tables live and how they are read, before anything about a run is known.

    locations    local paths and object-store URLs (`s3://`), and the files beside an output
    read         CSV, Parquet and batch-JSONL inputs streamed as record batches, never whole
    batch_jsonl  the OpenAI batch JSONL format: request lines in, result lines out
    openai_api   the API's fixed paths and limits (the chat path, the batch file limits)

May import: `batchrun.errors`. Nothing else of batchrun: settings, the journal and the run build
on it.
"""
