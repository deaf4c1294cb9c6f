"""The admin API (/admin/api/*). Placeholder until the control plane lands."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy_service.app import Gateway


def routes(gw: Gateway) -> list[Any]:
    return []


def start_jobs(gw: Gateway) -> None:
    return None
