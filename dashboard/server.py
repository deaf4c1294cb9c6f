"""The dashboard's server: Streamlit's own ASGI app (`st.App`, its documented way to add routes and middleware)
around the entry script app.py, with the Host/Origin guard in front of every request (hosts.py) and the one-time
sign-in link route (sessions.py). `keyrack dashboard` runs `streamlit run dashboard/server.py`; Streamlit finds
`app` here and serves it with its own uvicorn runner and every `--server.*` option.

The guard is middleware, not a check in the script: a script run starts only after the WebSocket is open, while the
page, its assets and the upgrade itself are plain requests that must be refused too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st
from starlette.middleware import Middleware
from starlette.routing import Route

if "dashboard" not in sys.modules:  # `streamlit run dashboard/server.py` from a checkout: the package's parent
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboard.hosts import HostGuard, HostPolicy
from dashboard.sessions import sign_in_route
from proxy_service.dashboard_link import SIGN_IN_PATH

app = st.App(
    "app.py",
    middleware=[Middleware(HostGuard, policy=HostPolicy.from_env())],
    routes=[Route(SIGN_IN_PATH, sign_in_route, methods=["GET"])],
)
