"""The dead-letter queue: jobs that could not be delivered, kept for operators and redrive.

    store.py       DeadLetterStore: entries, counts, retention, atomic replay and purge
    unreadable.py  parking what the worker cannot read as ``invalid_job``
    redrive.py     the scheduled replay of entries whose reason may heal
    reasons.py     the reasons an entry can have
    add.lua        add an entry once per id, then apply retention
    take.lua       replay or purge entries atomically, leaving a tombstone

Package files hold no imports, so importing one module never imports its siblings.
"""
