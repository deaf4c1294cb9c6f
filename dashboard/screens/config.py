"""Config: the live settings by section; changes are validated by the proxy and apply without a restart."""

import streamlit as st

from dashboard.logic import cache, clients_panel, dialogs
from dashboard.logic import config_form as cf
from dashboard.logic.i18n import t

dialogs.page_header("config.title")
cfg = cache.config()
if cfg:
    fields, values = cfg.get("fields") or [], cfg.get("values") or {}
    fields = [f for f in fields if f.get("name") != clients_panel.FIELD]  # its own editor below
    patch, local_errors = cf.changes(fields, values)
    n = len(patch) + len(set(local_errors) - set(patch))

    bar = st.columns([2, 1, 1, 1], vertical_alignment="center")
    bar[0].markdown(f"**:orange[{t('config.unsaved', n=n)}]**" if n else t("config.no_changes"))
    if bar[1].button(
        t("config.save"),
        type="primary",
        icon=":material/save:",
        key="cfg_save_btn",
        disabled=not patch or bool(local_errors),
        width="stretch",
    ):
        cf.save(fields, values)
    if bar[2].button(
        t("config.discard"), icon=":material/undo:", key="cfg_discard_btn", disabled=not n, width="stretch"
    ):
        cf.clear_widgets()
        st.rerun()
    if bar[3].button(t("config.reset"), icon=":material/restart_alt:", key="cfg_reset_btn", width="stretch"):
        dialogs.ask_confirm("reset", t("config.confirm_reset"))
        st.rerun()
    if st.session_state.pop("cfg_flash_invalid", False):
        st.error(t("config.invalid"))

    known = set(cf.SECTIONS)
    for section in [*cf.SECTIONS, "other"]:
        own = [f for f in fields if (f.get("section") if f.get("section") in known else "other") == section]
        if not own:
            continue
        with st.container(border=True):
            st.subheader(t(f"config.section.{section}"))
            cols = st.columns(2)
            for i, field in enumerate(own):
                with cols[i % 2]:
                    cf.widget(field, values)
                    cf.mark(field, values, local_errors)

    clients_panel.editor()

dialogs.show_dialog({"confirm": ("common.confirm_title", dialogs.confirm_body({"reset": cf.reset}), "small")})
