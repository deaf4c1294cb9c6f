"""The dashboard's logic, kept out of the page scripts in `screens/` so each page reads like a description of itself.

`client` is the only door to the proxy (its admin API), `cache` and `auth` sit in front of it; `i18n`, `fmt` and
`times` put words, numbers and instants on screen; the `*_panel` modules are a page's Streamlit parts and the
`*_view` / `*_data` / `charts` modules shape data and figures without Streamlit, so they are tested as plain functions.
"""
