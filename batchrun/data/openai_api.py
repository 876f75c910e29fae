"""The OpenAI API's fixed paths and limits, in one place for every layer that speaks it.

Here, at the bottom of the layers, because the batch JSONL reader (`batch_jsonl`) needs them as
much as the sender, the batch backend, the plan and the simulator do.
"""

from __future__ import annotations

CHAT_PATH = "/chat/completions"  # after a base URL, which ends in /v1
BATCH_URL = "/v1" + CHAT_PATH  # a batch request line's `url`, and the endpoint of its batch
MAX_BATCH_LINES = 50_000  # requests one Batch API input file may hold
MAX_BATCH_BYTES = 200 * 1000 * 1000  # bytes one Batch API input file may hold: 200 MB
MAX_BATCH_MB = MAX_BATCH_BYTES // 1_000_000  # the same limit as help and messages write it
