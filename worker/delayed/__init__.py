"""Delayed jobs: retries and long throttle waits parked in Redis, not in a worker's memory.

    store.py       DelayedJobs: park a job until a due time (on the Redis clock)
    mover.py       DueJobMover: the thread that pushes due jobs back onto the queue
    schedule.lua   park a job, recording its generation in the same step
    move_due.lua   move due jobs onto the delivery queue

Package files hold no imports, so importing one module never imports its siblings.
"""
