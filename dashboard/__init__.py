"""Keyrack's Streamlit dashboard (entry: dashboard/app.py, served by dashboard/server.py).

The page scripts live in `screens/`, not `pages/`: Streamlit runs files of a folder named `pages/` by itself (its
old multipage convention), which would let a first deep link run a page without the entry's sign-in guard. Under
another name only the entry's `st.navigation` runs them.

The rest: `logic/` (what the pages do, see its docstring), `server.py` with `hosts.py` and `sessions.py` (the web
process around Streamlit: Host/Origin guard and sign-in links)."""
