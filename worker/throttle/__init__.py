"""The shared rate-limit budget: one per scope, kept in Redis, changed by two Lua scripts.

    budget.py     Throttle: take a slot before a request, record its answer after it
    headers.py    X-Ratelimit-* and Retry-After, parsed without trusting any of them
    state.py      what ``snackvideo status`` and /metrics read of each scope
    acquire.lua   take a slot (and the job's done-check), or say how long to wait
    record.lua    release the slot, learn from the headers, set the delivered-marker

Package files hold no imports, so importing one module never imports its siblings.
"""
