"""Sending online: one request at a time under the run's limits, until each job settles.

    workers   a fixed pool of workers; each answer is committed before its worker sends again
    attempts  one job driven through budget, limiter, HTTP and decision until it settles
    http      one chat request, mapped to an answer or a classified failure
    connections  HTTP/1.1 keep-alive connections to one URL: the hot path's HTTP client
    decision  what one attempt's result means for its row, as a value
    limiter   pacing under RPM, TPM and concurrency, adaptive to the provider
    limits    the limiter's parts: pace, the provider's book, gate, window, evidence, concurrency
    budget    --max-cost and --max-total-tokens, counting what is in flight

May import: `batchrun.running` and the layers below it. The backends and the Ray engine build on it.
"""
