"""Imported once by the fork server of Apprise sends (`delivery.py`): loads Apprise and its plugin registry, then
freezes the heap, so each send forks in milliseconds and shares these pages instead of copying them."""

import gc

import apprise

from proxy_service.alerts import apprise_child  # noqa: F401 - the children's entry point, loaded once here too

apprise.Apprise.instantiate("json://localhost/", suppress_exceptions=True)
gc.freeze()
