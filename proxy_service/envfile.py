"""Where Keyrack's settings come from outside the code: the process environment, then `.env` in the working
directory. The one reader of `.env`: `Settings` (pydantic-settings, which parses it with python-dotenv) points at
`ENV_FILE`, and whatever reads a single setting outside `Settings` (the `keyrack dashboard` command, the dashboard
itself, which must not import the proxy's settings) calls `env_setting()`, parsed by the same python-dotenv."""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import dotenv_values

ENV_FILE = Path(".env")


def env_setting(name: str) -> str | None:
    """`name`'s value from the environment, else from `.env`; None when neither has it."""
    value = os.environ.get(name)
    if value is None:
        value = dotenv_values(ENV_FILE).get(name)
    return value
