"""The Alerts page's logic, kept out of the page file: tables for firing alerts, rules, channels, silences and
history; the rule editor's body; the backtest chart (the metric over 7 days, the threshold, would-fire spans)."""

from __future__ import annotations

import re
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from dashboard.logic import charts
from dashboard.logic.i18n import EN, t
from proxy_service.alerts import values

# Text marks, not emoji: headless and server fonts often lack emoji glyphs.
SEVERITY_ICON = {"critical": "▲▲", "warning": "▲", "info": "·"}
STATE_ICON = {"firing": "●", "pending": "◐", "inactive": "○"}
OPS = (">", ">=", "<", "<=")
SEVERITIES = ("info", "warning", "critical")
GROUPS = ("", "model", "project", "key")
THRESHOLD = "#d9534f"
VALUE = "#4c78a8"
SPAN = "rgba(217, 83, 79, 0.18)"


def fmt_value(v: Any, unit: str = "") -> str:
    """A value as the proxy's alert messages write it (one formatting for both), "–" for none."""
    return values.format_value(None if v is None or pd.isna(v) else float(v), unit, missing="–")


def labels_text(labels: dict[str, str] | None) -> str:
    """An alert's labels, their names in the session's language: "模型=gemini-2.5-flash"."""
    return ", ".join(f"{t(f'dim.{k}') if f'dim.{k}' in EN else k}={v}" for k, v in (labels or {}).items()) or "–"


def metric_label(name: str) -> str:
    """A metric's name as a reader says it (the catalogue's id when no translation exists)."""
    return t(f"alerts.metric.{name}") if f"alerts.metric.{name}" in EN else name


def rule_name(rule_id: Any, name: Any) -> str:
    """A rule's name: a shipped default still under its English name reads in the session's language; a name an
    operator typed is shown as typed."""
    key = f"alerts.rule.{rule_id}"
    if key in EN and name == EN[key]:
        return t(key)
    return str(name or "")


def seconds(n: Any) -> str:
    return t("alerts.seconds", n=n)


_MESSAGES = [  # the fixed notes of the alert history (the proxy's words), and what varies in them
    (re.compile(r"^silenced: not sent$"), "alerts.msg.silenced"),
    (re.compile(r"^will retry: (?P<why>.*)$", re.S), "alerts.msg.retry"),
    (re.compile(r"^gave up after (?P<n>\d+) attempts: (?P<why>.*)$", re.S), "alerts.msg.gave_up"),
    (re.compile(r"^this channel's queue is full; not sent$"), "alerts.msg.queue_full"),
    (
        re.compile(r"^(?P<n>\d+) notification\(s\) not sent: over this channel's cap of (?P<cap>\d+) a minute$"),
        "alerts.msg.capped",
    ),
]


def history_message(message: Any) -> str:
    """A history note in the session's language when it is one of the proxy's fixed notes; else as recorded (a
    channel's own answer, a rendered notification)."""
    text = str(message or "")
    for pattern, key in _MESSAGES:
        if m := pattern.match(text):
            return t(key, **m.groupdict())
    return text


_BACKTEST_REASONS = [  # why the proxy cannot backtest a rule (its fixed sentences)
    (re.compile(r"^(?P<metric>\w+) has no recorded history \(it is read live\)$"), "alerts.why.live"),
    (re.compile(r"^backtests can filter by one model or one project only$"), "alerts.why.one_filter"),
    (re.compile(r"^exhausted_rate history has no model or project split$"), "alerts.why.no_split"),
]


def backtest_reason(reason: Any) -> str:
    text = str(reason or "")
    for pattern, key in _BACKTEST_REASONS:
        if m := pattern.match(text):
            return t(key, **{k: metric_label(v) for k, v in m.groupdict().items()})
    return text


def column_config(frame: pd.DataFrame, tz: str, **extra: Any) -> dict[str, Any]:
    """Translated headers for an Alerts table (hidden: its `id`), dates in the display zone, links, checkboxes."""
    import streamlit as st

    cc = st.column_config
    config: dict[str, Any] = {}
    for col in frame.columns:
        label = t(f"alerts.col.{col}")
        if col == "id":
            config[col] = None
        elif col in ("since", "until", "ts"):
            config[col] = cc.DatetimeColumn(label, timezone=tz, format="YYYY-MM-DD HH:mm:ss")
        elif col in ("errors", "trends"):
            config[col] = cc.LinkColumn(label, display_text=t("alerts.open"))
        elif col in ("enabled", "silenced", "active"):
            config[col] = cc.CheckboxColumn(label)
        elif col in ("channels", "attempt"):
            config[col] = cc.NumberColumn(label, format="%d")
        else:
            config[col] = cc.TextColumn(label)
    config.update(extra)
    return config


def units(metrics: list[dict[str, Any]]) -> dict[str, str]:
    return {m["name"]: m.get("unit", "") for m in metrics}


def firing_frame(items: list[dict[str, Any]], unit_of: dict[str, str], admin_page: str = "") -> pd.DataFrame:
    """Firing and pending alerts, with links to the matching calls on Error logs and Trends."""
    rows = []
    for a in items:
        unit = unit_of.get(a.get("metric", ""), "")
        labels = a.get("labels") or {}
        query = "&".join(f"{k}={v}" for k, v in labels.items() if k in ("model", "key"))
        rows.append(
            {
                "state": f"{STATE_ICON.get(a['state'], '')} {t('alerts.state.' + a['state'])}",
                "severity": f"{SEVERITY_ICON.get(a.get('severity', ''), '')} {t('alerts.sev.' + a.get('severity', 'info'))}",
                "rule": rule_name(a.get("rule_id"), a["name"]),
                "since": pd.to_datetime(a.get("since"), utc=True),
                "value": f"{fmt_value(a.get('value'), unit)} {a.get('op', '')} {fmt_value(a.get('threshold'), unit)}",
                "labels": labels_text(labels),
                "silenced": bool(a.get("silenced")),
                "errors": f"{admin_page}error_logs" + (f"?{query}" if query else ""),
                "trends": f"{admin_page}trends" + (f"?{query}" if query else ""),
            }
        )
    return pd.DataFrame(
        rows, columns=["state", "severity", "rule", "since", "value", "labels", "silenced", "errors", "trends"]
    )


def rules_frame(rules: list[dict[str, Any]], unit_of: dict[str, str]) -> pd.DataFrame:
    rows = [
        {
            "enabled": bool(r["enabled"]),
            "state": f"{STATE_ICON.get(r.get('state', 'inactive'), '')} {t('alerts.state.' + r.get('state', 'inactive'))}",
            "name": rule_name(r["id"], r["name"]),
            "condition": f"{metric_label(r['metric'])} {r['op']} {fmt_value(r['threshold'], unit_of.get(r['metric'], ''))}",
            "window": seconds(r["window_s"]),
            "for": seconds(r["for_s"]),
            "severity": f"{SEVERITY_ICON.get(r['severity'], '')} {t('alerts.sev.' + r['severity'])}",
            "channels": len(r.get("channels") or []),
            "id": r["id"],
        }
        for r in rules
    ]
    return pd.DataFrame(
        rows, columns=["enabled", "state", "name", "condition", "window", "for", "severity", "channels", "id"]
    )


def enabled_changes(before: pd.DataFrame, after: pd.DataFrame) -> list[tuple[str, bool]]:
    """(rule id, enabled) for the rows whose checkbox the operator flipped in the rules table."""
    if before.empty or len(before) != len(after):
        return []
    out = []
    for (_, b), (_, a) in zip(before.iterrows(), after.iterrows(), strict=True):
        if bool(b["enabled"]) != bool(a["enabled"]):
            out.append((str(b["id"]), bool(a["enabled"])))
    return out


def channels_frame(channels: list[dict[str, Any]]) -> pd.DataFrame:
    rows = [{"name": c["name"], "kind": c["scheme"], "url": c["url"], "id": c["id"]} for c in channels]
    return pd.DataFrame(rows, columns=["name", "kind", "url", "id"])


def silences_frame(silences: list[dict[str, Any]], rule_names: dict[str, str]) -> pd.DataFrame:
    """Silences, their rules by name (`rule_names`: id → the name as shown)."""
    rows = [
        {
            "active": bool(s.get("active")),
            "rule": rule_names.get(s.get("rule_id") or "", s.get("rule_id") or t("alerts.any_rule")),
            "labels": labels_text(s.get("labels")),
            "until": pd.to_datetime(s.get("until"), utc=True),
            "comment": s.get("comment") or "",
            "id": s["id"],
        }
        for s in silences
    ]
    return pd.DataFrame(rows, columns=["active", "rule", "labels", "until", "comment", "id"])


def silence_label(frame: pd.DataFrame, silence_id: str, tz: str) -> str:
    """A silence in a picker: its rule and when it ends (not its id)."""
    row = frame[frame["id"] == silence_id]
    if row.empty:
        return silence_id
    until = row["until"].iloc[0]
    when = until.tz_convert(tz).strftime("%Y-%m-%d %H:%M") if pd.notna(until) else "–"
    return f"{row['rule'].iloc[0]} · {t('alerts.col.until')} {when}"


def history_frame(items: list[dict[str, Any]], channel_names: dict[str, str] | None = None) -> pd.DataFrame:
    """The history table: kinds and states in the session's language, channels by name, blanks not "None"."""
    names = channel_names or {}
    rows = [
        {
            "ts": pd.to_datetime(h.get("ts"), utc=True),
            "kind": h["kind"],
            "event": t(f"alerts.kind.{h['kind']}") if f"alerts.kind.{h['kind']}" in EN else h["kind"],
            "rule": rule_name(h.get("rule_id"), h.get("rule")),
            "state": t(f"alerts.state.{h.get('state')}") if f"alerts.state.{h.get('state')}" in EN else "",
            "labels": labels_text(h.get("labels")),
            "value": "" if h.get("value") is None else f"{float(h['value']):,.4g}",
            "channel": names.get(h.get("channel_id") or "", h.get("channel_id") or ""),
            "attempt": h.get("attempt") or None,
            "message": history_message(h.get("message")),
        }
        for h in items
    ]
    return pd.DataFrame(
        rows, columns=["ts", "kind", "event", "rule", "state", "labels", "value", "channel", "attempt", "message"]
    )


KIND_COLOURS = {
    "fired": "#d9534f",
    "repeat": "#f0ad4e",
    "resolved": "#2e9e5b",
    "delivered": "#4c78a8",
    "failed": "#7b1f1f",
}


def timeline(history: pd.DataFrame, tz: str) -> go.Figure:
    """One dot per history event: time across, rule down, colour by kind."""
    fig = go.Figure()
    for kind, colour in KIND_COLOURS.items():
        part = history[history["kind"] == kind]
        if part.empty:
            continue
        fig.add_trace(
            go.Scatter(
                x=part["ts"].dt.tz_convert(tz),
                y=part["rule"],
                mode="markers",
                name=t(f"alerts.kind.{kind}"),
                marker={"color": colour, "size": 10, "symbol": "circle" if kind != "failed" else "x"},
                text=part["message"],
                hovertemplate="%{x}<br>%{y}<br>%{text}<extra></extra>",
            )
        )
    fig.update_layout(
        height=260,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        title={"text": t("alerts.timeline"), "x": 0},
        legend={"orientation": "h", "y": 1.1, "x": 1, "xanchor": "right"},
    )
    charts.date_ticks(fig)
    return fig


def backtest_figure(result: dict[str, Any], metric: str, unit: str, tz: str) -> go.Figure:
    """The metric over the last 7 days (15-minute points), the threshold line and shaded would-fire spans."""
    series = pd.DataFrame(result.get("series") or [], columns=["t", "value"])
    fig = go.Figure()
    if not series.empty:
        x = pd.to_datetime(series["t"], utc=True).dt.tz_convert(tz)
        y = pd.to_numeric(series["value"], errors="coerce") * (100 if unit == "ratio" else 1)
        fig.add_trace(
            go.Scatter(x=x, y=y, mode="lines", name=metric_label(metric), line={"color": VALUE}, connectgaps=False)
        )
    threshold = float(result.get("threshold", 0)) * (100 if unit == "ratio" else 1)
    fig.add_hline(
        y=threshold,
        line={"color": THRESHOLD, "dash": "dash"},
        annotation_text=f"{t('alerts.threshold')} {result.get('op', '')} {threshold:g}",
    )
    for span in result.get("spans") or []:
        a = pd.Timestamp(span["start"]).tz_convert(tz)
        b = pd.Timestamp(span["end"]).tz_convert(tz)
        fig.add_vrect(x0=a, x1=b, fillcolor=SPAN, line_width=0)
    fig.update_layout(
        height=300,
        margin={"l": 10, "r": 10, "t": 50, "b": 10},
        showlegend=False,
        title={"text": t("alerts.backtest_title", n=result.get("fired", 0)), "x": 0},
        yaxis_title=f"{metric_label(metric)} ({'%' if unit == 'ratio' else unit_text(unit)})",
        xaxis_title=t("chart.time", tz=tz),
    )
    charts.date_ticks(fig)
    return fig


def unit_text(unit: str) -> str:
    return t(f"alerts.unit.{unit}") if f"alerts.unit.{unit}" in EN else unit


def rule_body(values: dict[str, Any]) -> dict[str, Any]:
    """The editor's widget values → a rule body for the API (empty filters dropped)."""
    filters = {k: v.strip() for k, v in (values.get("filters") or {}).items() if isinstance(v, str) and v.strip()}
    body = {
        "name": values["name"].strip(),
        "metric": values["metric"],
        "op": values["op"],
        "threshold": float(values["threshold"]),
        "window_s": int(values["window_s"]),
        "for_s": int(values["for_s"]),
        "severity": values["severity"],
        "channels": list(values.get("channels") or []),
        "repeat_s": int(values.get("repeat_s", 3600)),
        "group_by": values.get("group_by") or "",
        "enabled": bool(values.get("enabled", True)),
    }
    if filters:
        body["filters"] = filters
    return body


def badge(active: dict[str, Any] | None) -> str:
    """The sidebar badge: the firing count (empty when nothing fires)."""
    n = int((active or {}).get("firing") or 0)
    return f":red-badge[:material/notifications_active: {t('alerts.badge', n=n)}]" if n else ""
