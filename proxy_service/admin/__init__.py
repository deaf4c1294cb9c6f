"""The admin API (`/admin/api/*`): the control plane for the dashboard and for scripts.

`api.mount(gw)` builds the one `Mount("/admin/api", ...)`; each concern has its module with a `ROUTES` list of
`(path, methods, handler)` (keys, config, errors, stats, sql); `common.py` holds what they share. This file stays
empty so that importing a submodule never runs route code (no import cycle through the package).
"""
