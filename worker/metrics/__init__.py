"""Prometheus metrics of the worker, correct under Celery's prefork pool.

    recording.py     what a delivering process records (a leaf: imports nothing of ours)
    multiprocess.py  per-process files, folded when a process is gone
    collectors.py    the families /metrics serves: process files, Redis state, clock skew
    server.py        the Celery hooks and the bootstep that serves /metrics

Package files hold no imports, so importing one module never imports its siblings.
"""
