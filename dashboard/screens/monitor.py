"""Monitor: pool health at a glance, then the keys: search, filter, per-key and batch actions."""

import streamlit as st

from dashboard.logic import cache, client_use_panel, dialogs, forecast_view, headroom_panel, trends_data
from dashboard.logic import keys_panel as kp
from dashboard.logic.i18n import t, wkey

head, add = st.columns([5, 1], vertical_alignment="bottom")
head.title(t("monitor.title"))
if add.button(t("monitor.add_keys"), icon=":material/add:", key="open_add", type="primary", width="stretch"):
    dialogs.open_dialog("add")
    st.rerun()
dialogs.show_flash()


@st.fragment(run_every=st.session_state.get(wkey("auto_refresh")) or None)
def live_cards() -> None:
    ttl = 1.0 if st.session_state.get(wkey("auto_refresh")) else cache.TTL_S  # each tick asks the proxy again
    summary = cache.safe(cache.api().summary, ttl=ttl)() or {}
    trends_data.rebuilding_note(summary)
    counts = cache.safe(cache.api().keys, ttl=ttl)(page_size=1)
    kp.cards(summary, counts.counts if counts else {})
    headroom_panel.panel(ttl)
    client_use_panel.panel(ttl)


live_cards()
soonest, recent = st.columns([1, 3])
with soonest:
    forecast_view.soonest_card()  # the Forecast page's headline: which model runs out first today
with recent:
    trends_data.recent_chart()
st.divider()
flt = kp.filters(kp.projects())
kp.batch_summary()
kp.key_section("active", flt)
kp.key_section("inactive", flt)

dialogs.show_dialog(
    {
        "add": ("monitor.add_title", kp.add_dialog, "medium"),
        "details": ("monitor.details_title", kp.details_dialog, "large"),
        "reveal": ("monitor.reveal_title", kp.reveal_dialog, "medium"),
        "confirm": ("common.confirm_title", dialogs.confirm_body({"delete_keys": kp.delete_keys}), "small"),
    }
)
