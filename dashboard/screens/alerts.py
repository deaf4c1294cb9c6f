"""Alerts: what fires now, the rules (enable/disable, edit with a 7-day backtest), channels, silences, history."""

import streamlit as st

from dashboard.logic import alerts_view as av
from dashboard.logic import cache, charts, dialogs, times
from dashboard.logic.client import AdminError
from dashboard.logic.i18n import choices_placeholder, t, wkey
from dashboard.logic.i18n import current as current_language

dialogs.page_header("alerts.title")
tz = times.tz_name()
metrics = cache.safe(cache.api().alert_metrics, ttl=300.0)() or []
unit_of = av.units(metrics)
rules = cache.safe(cache.api().alert_rules)() or []
channels = cache.safe(cache.api().alert_channels)() or []
names = {r["id"]: av.rule_name(r["id"], r["name"]) for r in rules}


def act(fn, done: str) -> None:  # type: ignore[no-untyped-def]
    try:
        fn()
    except AdminError as exc:
        cache.show_error(exc)
        return
    dialogs.flash(done)
    cache.bump()
    st.rerun()


# -- firing now -------------------------------------------------------------------------------------------------
active = cache.safe(cache.api().alerts_active, ttl=5.0)() or {}
st.subheader(t("alerts.firing_now", n=active.get("firing", 0)))
items = active.get("items") or []
if items:
    firing = av.firing_frame(items, unit_of)
    st.dataframe(firing, hide_index=True, width="stretch", key="tbl_firing", column_config=av.column_config(firing, tz))
else:
    st.success(t("alerts.all_clear"), icon=":material/check_circle:")

# The open tab is remembered (one key per language: the labels are its values), so an action's rerun (adding a
# channel, a silence) stays on the tab it was taken on.
rules_tab, channels_tab, silences_tab, history_tab = st.tabs(
    [t("alerts.tab.rules"), t("alerts.tab.channels"), t("alerts.tab.silences"), t("alerts.tab.history")],
    key=f"alerts_tab_{current_language()}",
    on_change="rerun",
)

with rules_tab:
    frame = av.rules_frame(rules, unit_of)
    edited = st.data_editor(
        frame,
        hide_index=True,
        width="stretch",
        key="tbl_rules",
        disabled=[c for c in frame.columns if c != "enabled"],
        column_config=av.column_config(frame, tz),
    )
    for rule_id, enabled in av.enabled_changes(frame, edited):
        act(
            lambda r=rule_id, e=enabled: cache.api().update_alert_rule(r, {"enabled": e}),
            t("alerts.enabled" if enabled else "alerts.disabled", name=names.get(rule_id, rule_id)),
        )
    choice = st.selectbox(
        t("alerts.edit"),
        ["", *names],
        format_func=lambda r: names.get(r) or t("alerts.new_rule"),
        key=wkey("rule_choice"),
    )
    base = next((r for r in rules if r["id"] == choice), None) or {}
    with st.form(f"rule_form_{choice or 'new'}"):
        c1, c2, c3 = st.columns([3, 2, 1])
        name = c1.text_input(t("alerts.f.name"), base.get("name", ""))
        metric_names = [m["name"] for m in metrics] or ["success_rate"]
        metric = c2.selectbox(
            t("alerts.f.metric"),
            metric_names,
            index=metric_names.index(base["metric"]) if base.get("metric") in metric_names else 0,
            format_func=av.metric_label,
        )
        severity = c3.selectbox(
            t("alerts.f.severity"),
            av.SEVERITIES,
            index=av.SEVERITIES.index(base.get("severity", "warning")),
            format_func=lambda s: t(f"alerts.sev.{s}"),
        )
        c1, c2, c3, c4, c5 = st.columns(5)
        op = c1.selectbox(t("alerts.f.op"), av.OPS, index=av.OPS.index(base.get("op", "<")))
        threshold = c2.number_input(t("alerts.f.threshold"), value=float(base.get("threshold", 0.9)), format="%g")
        window_s = c3.number_input(t("alerts.f.window_s"), 10, 21600, int(base.get("window_s", 300)))
        for_s = c4.number_input(t("alerts.f.for_s"), 0, 604800, int(base.get("for_s", 60)))
        repeat_s = c5.number_input(t("alerts.f.repeat_s"), 0, 604800, int(base.get("repeat_s", 3600)))
        c1, c2, c3 = st.columns(3)
        group_by = c1.selectbox(
            t("alerts.f.group_by"),
            av.GROUPS,
            index=av.GROUPS.index(base.get("group_by", "")),
            format_func=lambda g: t(f"dim.{g}") if g else t("alerts.none"),
        )
        model = c2.text_input(t("alerts.f.model"), (base.get("filters") or {}).get("model", ""))
        project = c3.text_input(t("alerts.f.project"), (base.get("filters") or {}).get("project", ""))
        chosen = st.multiselect(
            t("alerts.f.channels"),
            [c["id"] for c in channels],
            default=base.get("channels", []),
            format_func=lambda c: next((x["name"] for x in channels if x["id"] == c), c),
            placeholder=choices_placeholder(channels),
            disabled=not channels,
        )
        b1, b2, b3 = st.columns(3)
        run_backtest = b1.form_submit_button(t("alerts.backtest"), icon=":material/history:")
        save = b2.form_submit_button(t("alerts.save"), type="primary", icon=":material/save:")
        delete = b3.form_submit_button(t("alerts.delete"), icon=":material/delete:", disabled=not base)
    body = av.rule_body(
        {
            "name": name or "?",
            "metric": metric,
            "op": op,
            "threshold": threshold,
            "window_s": window_s,
            "for_s": for_s,
            "severity": severity,
            "channels": chosen,
            "repeat_s": repeat_s,
            "group_by": group_by,
            "filters": {"model": model, "project": project},
            "enabled": base.get("enabled", True),
        }
    )
    if run_backtest:
        try:
            result = cache.api().alert_backtest(body)
        except AdminError as exc:
            cache.show_error(exc)
        else:
            if result.get("supported"):
                st.plotly_chart(
                    av.backtest_figure(result, metric, unit_of.get(metric, ""), tz),
                    key="backtest_chart",
                    config=charts.plotly_config(),
                )
                st.caption(
                    t("alerts.backtest_caption", n=result.get("fired", 0), h=round(result.get("firing_s", 0) / 3600, 1))
                )
            else:
                st.info(t("alerts.backtest_unsupported", why=av.backtest_reason(result.get("reason"))))
    if save:
        if base:
            act(lambda: cache.api().update_alert_rule(base["id"], body), t("alerts.saved", name=body["name"]))
        else:
            act(lambda: cache.api().create_alert_rule(body), t("alerts.saved", name=body["name"]))
    if delete and base:
        act(lambda: cache.api().delete_alert_rule(base["id"]), t("alerts.deleted", name=base["name"]))

with channels_tab:
    cframe = av.channels_frame(channels)
    if not cframe.empty:
        st.dataframe(
            cframe, hide_index=True, width="stretch", key="tbl_channels", column_config=av.column_config(cframe, tz)
        )
        pick = st.selectbox(
            t("alerts.channel"),
            cframe["id"].tolist(),
            key="channel_pick",
            format_func=lambda c: next((x["name"] for x in channels if x["id"] == c), c),
        )
        c1, c2 = st.columns(2)
        if c1.button(t("alerts.send_test"), icon=":material/send:", key="channel_test"):
            try:
                res = cache.api().test_alert_channel(pick)
            except AdminError as exc:
                cache.show_error(exc)
            else:
                (st.success if res.get("ok") else st.error)(t("alerts.test_result", msg=res.get("message", "")))
        if c2.button(t("alerts.delete"), icon=":material/delete:", key="channel_delete"):
            act(lambda: cache.api().delete_alert_channel(pick), t("alerts.channel_deleted"))
    with st.form("channel_form", clear_on_submit=True):
        st.caption(t("alerts.channel_help"))
        cname = st.text_input(t("alerts.f.name"), key="channel_name")
        curl = st.text_input(t("alerts.f.url"), type="password", key="channel_url")
        if st.form_submit_button(t("alerts.add_channel"), icon=":material/add:"):
            act(lambda: cache.api().create_alert_channel(cname or "channel", curl), t("alerts.channel_added"))

with silences_tab:
    silences = cache.safe(cache.api().alert_silences)() or []
    sframe = av.silences_frame(silences, names)
    if not sframe.empty:
        st.dataframe(
            sframe,
            hide_index=True,
            width="stretch",
            key="tbl_silences",
            column_config=av.column_config(sframe, tz),
        )
        gone = st.selectbox(
            t("alerts.silence"),
            sframe["id"].tolist(),
            key="silence_pick",
            format_func=lambda i: av.silence_label(sframe, i, tz),
        )
        if st.button(t("alerts.delete"), icon=":material/delete:", key="silence_delete"):
            act(lambda: cache.api().delete_alert_silence(gone), t("alerts.silence_deleted"))
    with st.form("silence_form"):
        c1, c2 = st.columns(2)
        srule = c1.selectbox(t("alerts.f.rule"), list(names), format_func=lambda r: names.get(r, r))
        hours = c2.number_input(t("alerts.f.hours"), 0.1, 8784.0, 2.0)
        comment = st.text_input(t("alerts.f.comment"))
        if st.form_submit_button(t("alerts.add_silence"), icon=":material/notifications_off:") and srule:
            act(
                lambda: cache.api().create_alert_silence(
                    {"rule_id": srule, "duration_s": hours * 3600, "comment": comment}
                ),
                t("alerts.silence_added"),
            )

with history_tab:
    hist = av.history_frame(cache.safe(cache.api().alert_history)() or [], {c["id"]: c["name"] for c in channels})
    if hist.empty:
        st.info(t("common.none"))
    else:
        st.plotly_chart(av.timeline(hist, tz), key="history_chart", config=charts.plotly_config())
        st.dataframe(
            hist,
            hide_index=True,
            width="stretch",
            key="tbl_history",
            column_config=av.column_config(hist, tz, kind=None),
        )
