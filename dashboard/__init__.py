"""Keyrack's Streamlit dashboard (entry: dashboard/app.py)."""

from __future__ import annotations


def _leave_the_pages_folder_convention() -> None:
    """Streamlit runs a requested `pages/<name>.py` by itself (its old "pages/ folder" convention) until some
    session in the process has called `st.navigation`. So the first request a fresh dashboard gets, if it is a deep
    link such as /trends, would run that page without the entry's sign-in guard. The first import of this package
    happens in that very run: switch the convention off and rerun, so the entry script draws the page (or the
    login in its place). Streamlit keeps the switch as a class attribute of its page manager; st.navigation sets
    the same attribute, so this only does earlier what the entry does anyway."""
    try:
        import streamlit as st
        from streamlit.runtime.pages_manager import PagesManager
        from streamlit.runtime.scriptrunner import get_script_run_ctx
    except ImportError:  # pragma: no cover
        return
    if PagesManager.uses_pages_directory and get_script_run_ctx(suppress_warning=True) is not None:
        PagesManager.uses_pages_directory = False
        st.rerun()


_leave_the_pages_folder_convention()
