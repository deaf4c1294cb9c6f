"""The dashboard's only door to the proxy: the admin API (/admin/api/*) over one shared httpx.Client.

Every method returns plain dicts or pandas DataFrames. Every failure (proxy down, wrong token, timeout, an API
error answer) becomes an `AdminError` whose `kind` says what happened and whose `message` can be shown to a user
as is; the dashboard never shows a traceback. Nothing here imports Streamlit, so it works in tests and scripts.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.ipc

API_PREFIX = "/admin/api"
KEY_STATUSES = ("active", "cooling", "invalid", "disabled")


class AdminError(Exception):
    """A failed admin call, with a message fit for the screen.

    kind: unreachable · unauthorized · timeout · invalid (422: see `errors`) · not_found · server · api.
    reason: the proxy's machine-readable `error.reason` (e.g. "query_failed"), which the dashboard translates;
    detail: the part of the message that is data (e.g. DuckDB's own parser message), shown as is.
    """

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        status: int | None = None,
        field: str | None = None,
        errors: dict[str, str] | None = None,
        cause: str | None = None,
        reason: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.cause = cause
        self.reason = reason
        self.detail = detail
        self.kind = kind
        self.message = message
        self.status = status
        self.field = field
        self.errors = errors or {}


@dataclass
class KeyPage:
    items: pd.DataFrame
    total: int
    page: int
    page_size: int
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class ErrorPage:
    items: pd.DataFrame
    total: int
    page: int
    page_size: int


@dataclass
class QueryResult:
    frame: pd.DataFrame
    truncated: bool = False
    elapsed_ms: float | None = None


def iso(value: datetime | str | None) -> str | None:
    """A query-string time: aware datetimes go to UTC ISO-8601, naive ones are taken as UTC."""
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(timespec="seconds") + "Z"


def _params(**kw: Any) -> dict[str, Any]:
    """Drop empty filters; join lists with commas; times to ISO."""
    out: dict[str, Any] = {}
    for k, v in kw.items():
        if v is None or v == "" or v == [] or v == ():
            continue
        if isinstance(v, (list, tuple)):
            v = ",".join(str(x) for x in v)
        elif isinstance(v, datetime):
            v = iso(v)
        elif isinstance(v, bool):
            v = "true" if v else "false"
        out[k] = v
    return out


def _frame(rows: list[dict[str, Any]], columns: list[str] | None = None, times: tuple[str, ...] = ()) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=columns) if columns and not rows else pd.DataFrame(rows)
    for col in times:
        if col in df.columns:
            df[col] = pd.to_datetime(df[col], utc=True, errors="coerce", format="ISO8601")
    return df


KEY_COLUMNS = [
    "id",
    "label",
    "project",
    "status",
    "masked",
    "created_at",
    "last_used_at",
    "consecutive_failures",
    "total_failures",
    "requests",
    "successes",
    "last_error",
    "cooling",
]
KEY_TIMES = ("created_at", "last_used_at", "last_checked_at")
ERROR_COLUMNS = ["id", "ts", "request_id", "key_id", "model", "status", "error_type", "message"]


class AdminClient:
    """Typed access to the admin API. One instance per (URL, token); share its httpx.Client across reruns."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 15.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.http = http or httpx.Client(timeout=timeout)
        self.timeout = timeout

    # -- plumbing ------------------------------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, timeout: float | None = None, **kw: Any) -> httpx.Response:
        url = f"{self.base_url}{API_PREFIX}{path}"
        headers = {"Authorization": f"Bearer {self.token.strip()}"} if self.token.strip() else {}
        try:
            resp = self.http.request(method, url, headers=headers, timeout=timeout or self.timeout, **kw)
        except httpx.TimeoutException:
            raise AdminError("timeout", f"The proxy at {self.base_url} did not answer in time.") from None
        except httpx.HTTPError as exc:
            raise AdminError(
                "unreachable",
                f"Cannot reach the proxy at {self.base_url} ({type(exc).__name__}).",
                cause=type(exc).__name__,
            ) from None
        if resp.status_code < 400:
            return resp
        raise self._error(resp)

    def _error(self, resp: httpx.Response) -> AdminError:
        """The API's one error shape: {"error": {"code", "message", "field"?, "reason"?, "detail"?}, "errors"?}."""
        status = resp.status_code
        try:
            body = resp.json()
        except ValueError:
            body = {}
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict):  # not the admin API answering (a proxy in between, a wrong URL)
            return AdminError(
                "not_found" if status == 404 else "server" if status >= 500 else "api",
                resp.text[:300] or f"HTTP {status}",
                status=status,
            )
        message, field_name = str(err.get("message") or f"HTTP {status}"), err.get("field")
        reason, detail = err.get("reason"), err.get("detail")

        def error(kind: str, text: str = message, errors: dict[str, str] | None = None) -> AdminError:
            return AdminError(kind, text, status=status, field=field_name, errors=errors, reason=reason, detail=detail)

        if status == 401:
            return error("unauthorized", "The admin token was not accepted.")
        if status == 403:
            return error("unauthorized")
        if status == 404:
            return error("not_found")
        if status == 422:
            errors = {str(k): str(v) for k, v in (body.get("errors") or {}).items()}
            if field_name and field_name not in errors:
                errors[field_name] = message
            return error("invalid", errors=errors)
        return error("server" if status >= 500 else "api")

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        resp = self._request(method, path, **kw)
        if not resp.content:
            return {}
        try:
            return resp.json()
        except ValueError:
            raise AdminError("server", f"The proxy answered {path} with something that is not JSON.") from None

    def close(self) -> None:
        self.http.close()

    # -- keys ----------------------------------------------------------------------------------------------------
    def keys(
        self,
        *,
        status: str | list[str] | None = None,
        project: str | None = None,
        q: str | None = None,
        min_failures: int | None = None,
        created_from: datetime | str | None = None,
        created_to: datetime | str | None = None,
        sort: str | None = None,
        order: str | None = None,
        page: int = 1,
        page_size: int = 50,
    ) -> KeyPage:
        data = self._json(
            "GET",
            "/keys",
            params=_params(
                status=status,
                project=project,
                q=q,
                min_failures=min_failures or None,
                created_from=created_from,
                created_to=created_to,
                sort=sort,
                order=order,
                page=page,
                page_size=page_size,
            ),
        )
        items = _frame(data["items"], KEY_COLUMNS, KEY_TIMES)
        counts = {s: int(data["counts"].get(s, 0)) for s in KEY_STATUSES}
        return KeyPage(items, int(data["total"]), int(data["page"]), int(data["page_size"]), counts)

    def key(self, key_id: str) -> dict[str, Any]:
        """Details: {"key", "usage_by_model", "recent_calls", "cooldowns", "headroom"} (lists as DataFrames)."""
        data = self._json("GET", f"/keys/{key_id}")
        out: dict[str, Any] = {"key": data["key"]}
        for name in ("usage_by_model", "recent_calls", "cooldowns", "headroom"):
            out[name] = _frame(data[name], times=("ts", "until", "last_ts"))
        return out

    def add_keys(self, text: str, project: str | None = None, label: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"text": text}
        if project:
            body["project"] = project
        if label:
            body["label"] = label
        return self._json("POST", "/keys", json=body)

    def key_action(self, key_id: str, action: str) -> dict[str, Any]:
        """verify | reset | enable | disable | delete on one key."""
        if action == "delete":
            return dict(self._json("DELETE", f"/keys/{key_id}"))
        return self._json("POST", f"/keys/{key_id}/{action}", timeout=max(self.timeout, 60.0))

    def reveal(self, key_id: str) -> str:
        return str(self._json("POST", f"/keys/{key_id}/reveal")["secret"])

    def batch(self, action: str, ids: list[str]) -> dict[str, Any]:
        return self._json("POST", "/keys/batch", json={"action": action, "ids": list(ids)}, timeout=120.0)

    # -- alerts --------------------------------------------------------------------------------------------------
    def alert_metrics(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/alerts/metrics").get("items", []))

    def alert_rules(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/alerts/rules").get("items", []))

    def create_alert_rule(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/alerts/rules", json=body)

    def update_alert_rule(self, rule_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self._json("PATCH", f"/alerts/rules/{rule_id}", json=patch)

    def delete_alert_rule(self, rule_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/alerts/rules/{rule_id}")

    def alert_backtest(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/alerts/backtest", json=body, timeout=60.0)

    def alert_channels(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/alerts/channels").get("items", []))

    def create_alert_channel(self, name: str, url: str) -> dict[str, Any]:
        return self._json("POST", "/alerts/channels", json={"name": name, "url": url})

    def delete_alert_channel(self, channel_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/alerts/channels/{channel_id}")

    def test_alert_channel(self, channel_id: str) -> dict[str, Any]:
        return self._json("POST", f"/alerts/channels/{channel_id}/test", timeout=60.0)

    def alerts_active(self) -> dict[str, Any]:
        return self._json("GET", "/alerts/active")

    def alert_history(self, limit: int = 200) -> list[dict[str, Any]]:
        return list(self._json("GET", "/alerts/history", params={"limit": limit}).get("items", []))

    def alert_silences(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/alerts/silences").get("items", []))

    def create_alert_silence(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/alerts/silences", json=body)

    def delete_alert_silence(self, silence_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/alerts/silences/{silence_id}")

    # -- config --------------------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return self._json("GET", "/config")

    def update_config(self, patch: dict[str, Any]) -> dict[str, Any]:
        return self._json("PATCH", "/config", json=patch)["values"]

    def reset_config(self) -> dict[str, Any]:
        return self._json("POST", "/config/reset")["values"]

    # -- error logs ----------------------------------------------------------------------------------------------
    def errors(
        self,
        *,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        key_id: str | None = None,
        model: str | None = None,
        status: int | str | None = None,
        error_type: str | None = None,
        q: str | None = None,
        page: int = 1,
        page_size: int = 50,
    ) -> ErrorPage:
        params = _params(
            key_id=key_id, model=model, status=status, error_type=error_type, q=q, page=page, page_size=page_size
        )
        params.update(_params(**{"from": start, "to": end}))
        data = self._json("GET", "/errors", params=params)
        items = _frame(data["items"], ERROR_COLUMNS, ("ts",))
        return ErrorPage(items, int(data["total"]), int(data["page"]), int(data["page_size"]))

    def error(self, error_id: str) -> dict[str, Any]:
        return self._json("GET", f"/errors/{error_id}")

    def delete_errors(
        self,
        *,
        ids: list[str] | None = None,
        filter: dict[str, Any] | None = None,
        older_than: datetime | str | None = None,
    ) -> int:
        if ids is not None:
            body: dict[str, Any] = {"ids": list(ids)}
        elif older_than is not None:
            body = {"older_than": iso(older_than)}
        else:
            body = {
                "filter": {
                    k: (iso(v) if isinstance(v, datetime) else v)
                    for k, v in (filter or {}).items()
                    if v not in (None, "")
                }
            }
        return int(self._json("POST", "/errors/delete", json=body)["deleted"])

    # -- stats ---------------------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return self._json("GET", "/stats/summary")

    def series(
        self,
        granularity: str = "day",
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        group_by: str = "none",
    ) -> pd.DataFrame:
        params = _params(granularity=granularity, group_by=group_by, format="arrow")
        params.update(_params(**{"from": start, "to": end}))
        resp = self._request("GET", "/stats/series", params=params)
        df = _arrow(resp)
        df["bucket"] = _utc(df["bucket"])
        _rebuilding(df, resp)
        return df

    def top(
        self, dim: str, start: datetime | str | None = None, end: datetime | str | None = None, limit: int = 10
    ) -> pd.DataFrame:
        params = _params(dim=dim, limit=limit, format="arrow")
        params.update(_params(**{"from": start, "to": end}))
        resp = self._request("GET", "/stats/top", params=params)
        return _rebuilding(_arrow(resp), resp)

    # -- forecasts -----------------------------------------------------------------------------------------------
    def forecast_quota(self) -> dict[str, Any]:
        return self._json("GET", "/forecast/quota")

    def forecast_demand(
        self, model: str | None = None, horizon_h: int = 24, granularity: str = "hour"
    ) -> dict[str, Any]:
        params = _params(model=model, horizon_h=horizon_h, granularity=granularity)
        return self._json("GET", "/forecast/demand", params=params, timeout=90.0)  # the first fit after a start

    def forecast_plan(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/forecast/plan", json=body)

    # -- explore -------------------------------------------------------------------------------------------------
    def explore(self, body: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
        """POST /explore as JSON: (the answer as a frame, its meta: timezone, from, to, source, compare_*)."""
        data = self._json("POST", "/explore", json=body, timeout=120.0)
        frame = pd.DataFrame(data.get("rows", []), columns=data.get("columns", []))
        return frame, {k: v for k, v in data.items() if k not in ("rows", "columns")}

    def explore_calls(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /explore/calls: {"items": [...], "sql": "..."} (the calls behind a cell)."""
        return self._json("POST", "/explore/calls", json=body, timeout=60.0)

    def clients(self) -> list[dict[str, Any]]:
        return self._json("GET", "/clients").get("items", [])

    def create_client(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /clients: the record and its `token` (the only time it is shown)."""
        return self._json("POST", "/clients", json=body)

    def update_client(self, client_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self._json("PATCH", f"/clients/{client_id}", json=patch)

    def revoke_client(self, client_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/clients/{client_id}")

    def rotate_client(self, client_id: str, grace_s: float) -> dict[str, Any]:
        """POST /clients/{id}/rotate: the record and its new `token`."""
        return self._json("POST", f"/clients/{client_id}/rotate", json={"grace_s": grace_s})

    def outcomes(
        self, granularity: str = "day", start: datetime | str | None = None, end: datetime | str | None = None
    ) -> pd.DataFrame:
        """The 429 story in long form: {bucket (UTC), group ("outcome:x" | "status:n" | "attempts" |
        "upstream_429"), n}."""
        params = _params(granularity=granularity)
        params.update(_params(**{"from": start, "to": end}))
        df = _arrow(self._request("GET", "/stats/outcomes", params=params))
        df["bucket"] = _utc(df["bucket"])
        return df

    def pool_headroom(self, hours: int = 24) -> dict[str, pd.DataFrame]:
        """{"models": per-model summary, "scopes": per (scope, model) rows}, tightest first (see the API)."""
        data = self._json("GET", "/pool/headroom", params={"hours": hours})
        times = ("cooling_until", "frees_at")
        return {"models": _frame(data["models"], times=times), "scopes": _frame(data["scopes"], times=times)}

    def error_facets(self, start: datetime | str | None = None, end: datetime | str | None = None) -> dict[str, list]:
        """{column: [values, most frequent first]} for the error-log filters (model, status, error_type, key_id)."""
        data = self._json("GET", "/errors/facets", params=_params(**{"from": start, "to": end}))
        return {name: [v["value"] for v in values] for name, values in data["facets"].items()}

    # -- SQL -----------------------------------------------------------------------------------------------------
    def query(self, sql: str, *, timeout: float = 120.0) -> QueryResult:
        resp = self._request("POST", "/query", json={"sql": sql, "format": "arrow"}, timeout=timeout)
        truncated = resp.headers.get("x-keyrack-truncated") == "true"
        elapsed = resp.headers.get("x-keyrack-elapsed-ms")
        return QueryResult(_arrow(resp), truncated, float(elapsed) if elapsed else None)

    def schema(self) -> dict[str, list[dict[str, str]]]:
        return dict(self._json("GET", "/schema")["tables"])

    def export(self) -> dict[str, Any]:
        return self._json("POST", "/export", timeout=300.0)


def _arrow(resp: httpx.Response) -> pd.DataFrame:
    """The Arrow IPC stream the tabular endpoints answer with (format=arrow) → DataFrame."""
    return pa.ipc.open_stream(io.BytesIO(resp.content)).read_all().to_pandas()


def _rebuilding(df: pd.DataFrame, resp: httpx.Response) -> pd.DataFrame:
    """`df.attrs["rebuilding"]`: the share of a pre-aggregate rebuild done (0..1) when the answer was read from the
    raw rows because of it (the `x-keyrack-rebuilding` header), else absent."""
    if (value := resp.headers.get("x-keyrack-rebuilding")) is not None:
        df.attrs["rebuilding"] = float(value)
    return df


def _utc(col: pd.Series) -> pd.Series:
    """Bucket times as tz-aware UTC, whatever the API sent (naive UTC timestamps, ISO strings, aware values)."""
    if pd.api.types.is_datetime64_any_dtype(col):
        return col.dt.tz_localize("UTC") if col.dt.tz is None else col.dt.tz_convert("UTC")
    return pd.to_datetime(col, utc=True, errors="coerce", format="ISO8601")
