"""Admin API: alerts — rules (CRUD), channels (masked; test-send), active alerts, history, silences, backtests,
and the metric catalogue. The engine (`proxy_service/alerts/engine.py`) holds the live state; this is its HTTP face.
Rule and channel errors are 422 naming the field.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from proxy_service.admin.common import iso, json_body, ok, parse_time, q_int, q_time
from proxy_service.alerts.channels import ChannelError
from proxy_service.alerts.rules import METRICS, NameTaken, RuleError, parse_rule
from proxy_service.errors import ApiError
from proxy_service.store import utcnow

if TYPE_CHECKING:
    from proxy_service.alerts.engine import AlertEngine
    from proxy_service.gateway import Gateway

HISTORY_KINDS = ("fired", "repeat", "resolved", "delivered", "failed")
_HISTORY = """
    SELECT id, ts, kind, rule_id, rule, severity, state, labels, value, threshold, channel_id, attempt, message
    FROM alert_events WHERE ts >= ? AND ts < ?{where} ORDER BY ts DESC, kind LIMIT ?"""


def _engine(gw: Gateway) -> AlertEngine:
    return gw.alerts


def _rule_error(exc: RuleError | ChannelError) -> ApiError:
    return ApiError(409 if isinstance(exc, NameTaken) else 422, f"{exc.field}: {exc.message}", exc.field)


def _rule_view(engine: AlertEngine, rule_id: str) -> dict[str, Any]:
    rule = engine.rules[rule_id]
    machine = engine.machines.get(rule_id)
    states = list(machine.states.values()) if machine is not None else []
    phase = "firing" if any(s.phase == "firing" for s in states) else "pending" if states else "inactive"
    adm = engine.admissions.get(rule_id)
    series = adm.view() if adm is not None else {"series": 0, "unknown": 0, "folded": 0, "cap": engine.max_series}
    return {**rule.to_dict(), "state": phase, "series": series}


def _known(engine: AlertEngine, request: Request, what: str) -> str:
    ident = request.path_params["id"]
    tables: dict[str, dict[str, Any]] = {"rule": engine.rules, "channel": engine.channels, "silence": engine.silences}
    table = tables[what]
    if ident not in table:
        raise ApiError(404, f"unknown {what} id {ident[:64]!r}", "id")
    return ident


# -- rules ---------------------------------------------------------------------------------------------------------
async def list_rules(gw: Gateway, _request: Request) -> Response:
    e = _engine(gw)
    return ok({"items": [_rule_view(e, rid) for rid in sorted(e.rules, key=lambda r: e.rules[r].name.lower())]})


async def create_rule(gw: Gateway, request: Request) -> Response:
    e = _engine(gw)
    try:
        rule = await e.add_rule(await json_body(request))
    except RuleError as exc:
        raise _rule_error(exc) from None
    return ok(_rule_view(e, rule.id), 201)


async def get_rule(gw: Gateway, request: Request) -> Response:
    e = _engine(gw)
    return ok(_rule_view(e, _known(e, request, "rule")))


async def patch_rule(gw: Gateway, request: Request) -> Response:
    e = _engine(gw)
    rid = _known(e, request, "rule")
    try:
        await e.update_rule(rid, await json_body(request))
    except RuleError as exc:
        raise _rule_error(exc) from None
    return ok(_rule_view(e, rid))


async def delete_rule(gw: Gateway, request: Request) -> Response:
    e = _engine(gw)
    rid = _known(e, request, "rule")
    await e.delete_rule(rid)
    return ok({"deleted": rid})


async def metric_catalogue(_gw: Gateway, _request: Request) -> Response:
    return ok(
        {
            "items": [
                {
                    "name": m.name,
                    "unit": m.unit,
                    "description": m.description,
                    "source": m.source,
                    "group_by": list(m.group_bys),
                    "backtest": m.backtest,
                }
                for m in METRICS.values()
            ]
        }
    )


async def backtest(gw: Gateway, request: Request) -> Response:
    e = _engine(gw)
    body = await json_body(request)
    try:
        rule = parse_rule({k: v for k, v in body.items() if k != "id"})
    except RuleError as exc:
        raise _rule_error(exc) from None
    if gw.rollup.usable:
        await gw.write(gw.rollup.fold)  # the rollup covers every written row
    now = time.time()
    return ok(await gw.read(lambda cur: e.backtest(cur, rule, now)))


# -- channels ------------------------------------------------------------------------------------------------------
async def list_channels(gw: Gateway, _request: Request) -> Response:
    e = _engine(gw)
    return ok({"items": [_channel_view(c.view()) for c in e.channels.values()]})


def _channel_view(view: dict[str, Any]) -> dict[str, Any]:
    return {**view, "created_at": iso(view["created_at"])}


async def create_channel(gw: Gateway, request: Request) -> Response:
    e = _engine(gw)
    try:
        channel, secret = await e.add_channel(await json_body(request))
    except ChannelError as exc:
        raise _rule_error(exc) from None
    view = _channel_view(channel.view())
    if secret:
        view["secret"] = secret  # the one time a generated signing secret is shown
    return ok(view, 201)


async def delete_channel(gw: Gateway, request: Request) -> Response:
    e = _engine(gw)
    cid = _known(e, request, "channel")
    await e.delete_channel(cid)
    return ok({"deleted": cid})


async def test_channel(gw: Gateway, request: Request) -> Response:
    e = _engine(gw)
    cid = _known(e, request, "channel")
    sent, message = await e.test_channel(cid)
    return ok({"id": cid, "ok": sent, "message": message})


# -- active, history -----------------------------------------------------------------------------------------------
async def active(gw: Gateway, _request: Request) -> Response:
    e = _engine(gw)
    items = [{**a, "since": iso(a["since"])} for a in e.active()]
    return ok(
        {
            "items": items,
            "firing": sum(a["state"] == "firing" for a in items),
            "pending": sum(a["state"] == "pending" for a in items),
            "evaluated_at": iso(e.last_eval_at),
            "interval_s": gw.config.alert_interval_s,
        }
    )


async def history(gw: Gateway, request: Request) -> Response:
    limit = q_int(request, "limit", 200, 1, 5000)
    hi = q_time(request, "to") or utcnow()
    lo = q_time(request, "from") or parse_time("1970-01-01T00:00:00Z", "from")
    where, params = "", list[Any]()
    rule_id = request.query_params.get("rule_id")
    if rule_id:
        where += " AND rule_id = ?"
        params.append(rule_id)
    kind = request.query_params.get("kind")
    if kind:
        kinds = [k.strip() for k in kind.split(",") if k.strip()]
        bad = [k for k in kinds if k not in HISTORY_KINDS]
        if bad:
            raise ApiError(400, f"kind must be among {', '.join(HISTORY_KINDS)} (got {bad[0][:32]!r})", "kind")
        where += " AND list_contains(?, kind)"
        params.append(kinds)
    await gw.write(lambda _cur: None)  # events recorded before this request are written first
    sql = _HISTORY.format(where=where)
    rows = await gw.read(lambda cur: cur.execute(sql, [lo, hi, *params, limit]).fetchall())
    names = (
        "id",
        "ts",
        "kind",
        "rule_id",
        "rule",
        "severity",
        "state",
        "labels",
        "value",
        "threshold",
        "channel_id",
        "attempt",
        "message",
    )
    items = []
    for row in rows:
        item = dict(zip(names, row, strict=True))
        item["labels"] = json.loads(item["labels"] or "{}")
        items.append(item)
    return ok({"items": items})


# -- silences ------------------------------------------------------------------------------------------------------
async def list_silences(gw: Gateway, _request: Request) -> Response:
    e = _engine(gw)
    now = time.time()
    items = [
        {**s.view(), "until": iso(s.until), "created_at": iso(s.created_at), "active": s.until > now}
        for s in sorted(e.silences.values(), key=lambda s: -s.until)
    ]
    return ok({"items": items})


async def create_silence(gw: Gateway, request: Request) -> Response:
    e = _engine(gw)
    body = await json_body(request)
    unknown = sorted(set(body) - {"rule_id", "labels", "until", "duration_s", "comment"})
    if unknown:
        raise ApiError(422, f"{unknown[0]}: unknown silence field", unknown[0])
    if "until" in body:
        until = _utc_epoch(parse_time(body["until"], "until"))
    elif "duration_s" in body:
        d = body["duration_s"]
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 < d <= 366 * 86400:
            raise ApiError(422, "duration_s must be a number of seconds between 1 and one year", "duration_s")
        until = time.time() + float(d)
    else:
        raise ApiError(422, "until (ISO-8601) or duration_s is required", "until")
    try:
        silence = await e.add_silence(body, until)
    except RuleError as exc:
        raise _rule_error(exc) from None
    v = silence.view()
    return ok({**v, "until": iso(v["until"]), "created_at": iso(v["created_at"]), "active": True}, 201)


def _utc_epoch(t: datetime) -> float:
    return float(t.replace(tzinfo=UTC).timestamp())


async def delete_silence(gw: Gateway, request: Request) -> Response:
    e = _engine(gw)
    sid = _known(e, request, "silence")
    await e.delete_silence(sid)
    return ok({"deleted": sid})


ROUTES: list[tuple[str, list[str], Any]] = [
    ("/alerts/metrics", ["GET"], metric_catalogue),
    ("/alerts/rules", ["GET"], list_rules),
    ("/alerts/rules", ["POST"], create_rule),
    ("/alerts/rules/{id}", ["GET"], get_rule),
    ("/alerts/rules/{id}", ["PATCH"], patch_rule),
    ("/alerts/rules/{id}", ["DELETE"], delete_rule),
    ("/alerts/backtest", ["POST"], backtest),
    ("/alerts/channels", ["GET"], list_channels),
    ("/alerts/channels", ["POST"], create_channel),
    ("/alerts/channels/{id}", ["DELETE"], delete_channel),
    ("/alerts/channels/{id}/test", ["POST"], test_channel),
    ("/alerts/active", ["GET"], active),
    ("/alerts/history", ["GET"], history),
    ("/alerts/silences", ["GET"], list_silences),
    ("/alerts/silences", ["POST"], create_silence),
    ("/alerts/silences/{id}", ["DELETE"], delete_silence),
]
