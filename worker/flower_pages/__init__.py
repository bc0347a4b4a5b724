"""The dead-letter pages Flower's own process serves: see, replay and purge from the browser.

    install.py          adds our routes to Flower's and our templates to its loader;
                        run by flowerconfig.py, the file Flower's --conf names
    flowerconfig.py     what ``celery -A worker flower --conf=...`` executes
    template_loader.py  Flower's templates plus ours (templates/), and the navigation link
    task_link.py        the row in Flower's task view that links a dead-lettered task to its entry
    query.py            reading a filter or a list of ids from a request, one error per field
    pages.py            the HTML pages: list, entry, bulk preview, confirm and result
    api.py              the same as JSON under /api/dead-letters
    base.py             what both share: Flower's handlers, the store, blocking calls

The handlers subclass Flower's own ``BaseHandler`` (``BaseApiHandler`` for the API), so
they inherit its authentication (FLOWER_BASIC_AUTH, OAuth) and its cross-site checks.
Replay and purge go through ``worker.deadletter.selection``, like ``snackvideo dlq``.

Package files hold no imports, so importing one module never imports its siblings.
"""
