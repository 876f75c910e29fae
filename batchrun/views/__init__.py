"""Views: what a person or a script reads about a run; nothing here sends a request.

    plan      the dry run (`batchrun plan`): rows, sample request, tokens, cost, time
    progress  the live display and the JSON events while a run goes
    status    what an output's journal says (`batchrun status`)
    logs      text or JSON log lines
    report    the self-contained HTML report (`batchrun report`)

May import: every layer below the API (backends, ray, sending, run, ...).
"""
