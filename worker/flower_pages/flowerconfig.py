"""Flower's configuration file (``celery -A worker flower --conf=<this file>``).

Flower executes it before it builds its web application; every name it leaves behind that
is a Flower option sets that option, so it leaves none: it only adds the dead-letter pages.
"""

from worker.flower_pages.install import install

install()
