"""Logging: one line per event worth logging, key=value pairs, never a secret (messages carry key ids only)."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)r"))
    root = logging.getLogger("keyrack")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
