"""The ``snackvideo`` command.

    main.py     the parser and the dispatch to each command
    enqueue.py  ``snackvideo enqueue``
    dlq.py      ``snackvideo dlq``
    status.py   ``snackvideo status``

None of these imports Celery: only ``status`` builds the Celery app, for its worker ping.
Package files hold no imports, so importing one module never imports its siblings.
"""
