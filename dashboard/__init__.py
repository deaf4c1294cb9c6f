"""Keyrack's Streamlit dashboard (entry: dashboard/app.py, served by dashboard/server.py)."""

from __future__ import annotations


def _leave_the_pages_folder_convention() -> None:
    """Streamlit runs a requested `pages/<name>.py` by itself (its old "pages/ folder" convention) until some
    session in the process has called `st.navigation`. So the first request a fresh dashboard gets, if it is a deep
    link such as /trends, would run that page without the entry's sign-in guard. Switch the convention off before
    that can happen: when the server imports this package (dashboard/server.py, before any session exists), or, for
    a bare `streamlit run dashboard/app.py`, in the very run of the first import (then rerun, so the entry script
    draws the page or the login in its place). Streamlit keeps the switch as a class attribute of its page manager
    and st.navigation sets the same attribute, so this only does earlier what the entry does anyway; it is the one
    place that touches it (there is no public switch)."""
    try:
        import streamlit as st
        from streamlit.runtime.pages_manager import PagesManager
        from streamlit.runtime.scriptrunner import get_script_run_ctx
    except ImportError:  # pragma: no cover
        return
    if PagesManager.uses_pages_directory is False:
        return
    PagesManager.uses_pages_directory = False
    if get_script_run_ctx(suppress_warning=True) is not None:
        st.rerun()


_leave_the_pages_folder_convention()
