"""A local stand-in for Scalev's SnackVideo events endpoint, for demos, tests and benchmarks.

Standard library only, and independent of ``producers`` and ``worker``: it plays the remote
side, so it must not share their code (a shared bug would hide on both ends).
"""

from sandbox.cli import main
from sandbox.server import make_server, serve_in_thread
from sandbox.state import SandboxConfig

__all__ = ["SandboxConfig", "main", "make_server", "serve_in_thread"]
