"""Tools run from a checkout (``make run``); not installed with the package."""
