"""Where Keyrack's settings come from outside the code: the process environment, then `.env` in the working
directory. The one reader of `.env`: `Settings` (pydantic-settings, which parses it with python-dotenv) points at
`ENV_FILE`, and whatever reads a single setting outside `Settings` (the `keyrack dashboard` command, the dashboard
itself, which must not import the proxy's settings) calls `env_setting()`, parsed by the same python-dotenv."""

from __future__ import annotations

import os
from pathlib import Path

from dotenv import dotenv_values

ENV_FILE = Path(".env")
PREFIX = "KEYRACK_"
# The KEYRACK_* names read outside `Settings` (whose fields are the others): by the dashboard, by the compose files'
# interpolation, by the test suite and `make screenshots`. Any other KEYRACK_* name is a typo, warned at startup.
OTHER_NAMES = frozenset(
    {
        "KEYRACK_ADMIN_URL",
        "KEYRACK_DASHBOARD_PUBLIC_HOSTS",
        "KEYRACK_DASHBOARD_LINK_KEY",
        "KEYRACK_DASHBOARD_PORT",
        "KEYRACK_PG_PASSWORD",
        "KEYRACK_TEST_PG_URL",
        "KEYRACK_TEST_REDIS_URL",
        "KEYRACK_SCREENSHOTS",
    }
)


def given_names() -> dict[str, str]:
    """Every KEYRACK_* name set, in the environment or in `.env`, with where it is set (the environment wins)."""
    found = {name: ".env" for name in dotenv_values(ENV_FILE) if name.upper().startswith(PREFIX)}
    found.update({name: "the environment" for name in os.environ if name.upper().startswith(PREFIX)})
    return found


def env_setting(name: str) -> str | None:
    """`name`'s value from the environment, else from `.env`; None when neither has it."""
    value = os.environ.get(name)
    if value is None:
        value = dotenv_values(ENV_FILE).get(name)
    return value
