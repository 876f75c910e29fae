"""The parts of the run's limiter (`batchrun.sending.limiter.Limiter` composes them).

    pace         one limit's clock (GCRA): smooth starts at a rate that 429s cut and probing restores
    book         the provider's own count, from its `x-ratelimit-*` headers
    gate         the admission: a start waits here until paces, the strictest window, books, a
                 pause and the cap allow it
    strict       the strictest plausible window: whole requests within one second's allowance
    window       the starts of the last seconds: what the run really sent
    evidence     do recent 429s show the run is too fast, or are they strays?
    concurrency  the cap on requests in flight, lowered by the server's 429s, creeping back

Each reads time only from the clock it is given, so tests move the clock instead of sleeping.
May import: what `batchrun.sending` may.
"""
