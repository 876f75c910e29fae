"""Protocol: what goes on the wire and what comes back means, as pure functions of plain data.

    render      an input row becomes chat messages, a request body and the key that names it
    tokens      the token estimate, and its calibration from the provider's counts
    answers     a chat-completion body read and judged into an Outcome
    structured  JSON answers parsed and checked against the job's schema
    retry       error classification and the retry policy, as values
    outcome     what became of one request, as the journal stores it

May import: `batchrun.settings`, `batchrun.data`, `batchrun.errors`. No I/O here.
"""
