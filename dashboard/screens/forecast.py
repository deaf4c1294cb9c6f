"""Forecast: when each model runs out today, how much traffic is coming, and what the pool needs for it."""

import streamlit as st

from dashboard.logic import cache, charts, dialogs, tables, times
from dashboard.logic import forecast_view as fv
from dashboard.logic.client import AdminError
from dashboard.logic.i18n import choices_placeholder, t, wkey

dialogs.page_header("forecast.title")
zone, tz = times.tz(), times.tz_name()

# -- 1. today's quota ---------------------------------------------------------------------------------------------
st.subheader(t("forecast.quota_title"))
quota = cache.safe(cache.api().forecast_quota, ttl=5.0)() or {}
if quota and not quota.get("items"):
    st.info(t("forecast.no_traffic_today"))
elif quota:
    st.plotly_chart(fv.timeline(quota, zone, tz), key="fc_timeline", config=charts.plotly_config())
    st.caption(t("forecast.quota_caption"))
    st.dataframe(fv.quota_frame(quota["pool"], zone, pool=True), hide_index=True, width="stretch")
    with st.expander(t("forecast.per_project")):
        per_project = fv.quota_frame(quota["items"], zone)
        st.dataframe(per_project, hide_index=True, width="stretch")
        tables.scroll_hint(per_project)

# -- 2. demand ----------------------------------------------------------------------------------------------------
st.subheader(t("forecast.demand_title"))
models = fv.models_of(quota)
c1, c2 = st.columns(2, vertical_alignment="bottom")
model = c1.selectbox(
    t("forecast.model"),
    ["total", *models],
    key=wkey("fc_model"),
    format_func=lambda m: t("forecast.all_models") if m == "total" else m,
)
span = (
    c2.segmented_control(
        t("forecast.horizon"),
        ["hour", "day"],
        default="hour",
        key=wkey("fc_span"),
        format_func=lambda s: t(f"forecast.horizon_{s}"),
    )
    or "hour"
)
view = cache.safe(cache.api().forecast_demand, ttl=60.0)(
    None if model == "total" else model, 24 if span == "hour" else 336, span
)
if view and view.get("status") == "ok":
    title = t(f"forecast.demand_chart_{span}", model=t("forecast.all_models") if model == "total" else model)
    st.plotly_chart(fv.demand_figure(view, zone, tz, title), key="fc_demand", config=charts.plotly_config())
    st.caption(fv.backtest_text(view))
    if view.get("demo_until"):
        st.caption(t("forecast.demo_note", until=fv.clock(view["demo_until"], zone)))
elif view and view.get("status") == "insufficient_history":
    st.info(t("forecast.need_history", need=view["need_days"], have=view["have_days"]))
elif view:  # pending: no forecast yet, and the reason why
    st.info(fv.pending_text(view))

# -- 3. planner ---------------------------------------------------------------------------------------------------
st.subheader(t("forecast.plan_title"))
st.caption(t("forecast.plan_intro"))
projects = sorted({str(i["project"]) for i in quota.get("items", []) if i.get("project")})
with st.form("fc_plan_form"):
    p1, p2, p3 = st.columns(3)
    plan_model = p1.selectbox(
        t("forecast.model"), models or ["gemini-2.5-flash"], key="fc_plan_model", accept_new_options=True
    )
    rpm = p2.number_input(t("forecast.target_rpm"), min_value=0.0, value=None, key="fc_rpm")
    rpd = p3.number_input(t("forecast.target_rpd"), min_value=0.0, value=None, key="fc_rpd")
    q1, q2, q3 = st.columns(3)
    remove = q1.multiselect(
        t("forecast.remove_projects"),
        projects,
        key="fc_remove",
        placeholder=choices_placeholder(projects),
        disabled=not projects,
    )
    lim_rpm = q2.number_input(t("forecast.whatif_rpm"), min_value=0, value=None, step=1, key="fc_lim_rpm")
    lim_rpd = q3.number_input(t("forecast.whatif_rpd"), min_value=0, value=None, step=1, key="fc_lim_rpd")
    submitted = st.form_submit_button(t("forecast.plan_submit"), type="primary")
if submitted:
    body = {
        "model": plan_model,
        "target_rpm": rpm,
        "target_rpd": rpd,
        "remove_projects": remove,
        "limits": {k: v for k, v in (("rpm", lim_rpm), ("rpd", lim_rpd)) if v is not None},
    }
    try:
        st.session_state["fc_plan"] = cache.api().forecast_plan({k: v for k, v in body.items() if v is not None})
    except AdminError as exc:
        st.session_state.pop("fc_plan", None)
        cache.show_error(exc)
plan = st.session_state.get("fc_plan")
if plan:
    m1, m2, m3 = st.columns(3)
    m1.metric(t("forecast.projects_needed"), "–" if plan["projects_needed"] is None else plan["projects_needed"])
    m2.metric(t("forecast.keys_needed"), "–" if plan["keys_needed"] is None else plan["keys_needed"])
    m3.metric(t("forecast.projects_to_add"), "–" if plan["projects_to_add"] is None else plan["projects_to_add"])
    st.dataframe(fv.headroom_frame(plan), hide_index=True, width="stretch")
    for note in plan.get("notes", []):
        st.caption(f"• {fv.plan_note(note)}")
