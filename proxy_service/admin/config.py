"""Admin API: the live configuration (read with secrets masked, patch, reset to the environment's values)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from proxy_service.admin.common import json_body, ok
from proxy_service.errors import ApiError
from proxy_service.settings import Config, ConfigError

if TYPE_CHECKING:
    from proxy_service.gateway import Gateway


async def get_config(gw: Gateway, _request: Request) -> Response:
    return ok({"values": gw.config.masked(), "fields": Config.fields()})


async def patch_config(gw: Gateway, request: Request) -> Response:
    patch = await json_body(request)
    if not patch:
        raise ApiError(400, 'send at least one setting to change, e.g. {"strategy": "round_robin"}')
    patch = gw.config.unmasked(patch)  # a masked secret sent back unchanged keeps the real value
    errors = {name: "unknown setting" for name in patch if name not in Config.model_fields}
    try:  # validate the known fields too, so that every bad field gets its message in one answer
        gw.config.updated({k: v for k, v in patch.items() if k in Config.model_fields})
    except ConfigError as exc:
        errors.update(exc.errors)
    if errors:
        raise ConfigError(errors)
    new = await gw.update_config(patch)
    return ok({"values": new.masked()})


async def reset_config(gw: Gateway, _request: Request) -> Response:
    new = await gw.reset_config()
    return ok({"values": new.masked()})


ROUTES: list[tuple[str, list[str], Any]] = [
    ("/config", ["GET"], get_config),
    ("/config", ["PATCH"], patch_config),
    ("/config/reset", ["POST"], reset_config),
]
