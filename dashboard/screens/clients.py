"""Clients: who may call the proxy — each client's use against its limits; create (the token shown once), rotate,
revoke."""

import streamlit as st

from dashboard.logic import cache, dialogs
from dashboard.logic import tenants_view as tv
from dashboard.logic.client import AdminError
from dashboard.logic.i18n import t, wkey

NEW_TOKEN = "clients_new_token"  # (label, token) of the client just made or rotated: shown in the next run only

dialogs.page_header("clients.title")
shown = st.session_state.pop(NEW_TOKEN, None)
if shown:
    st.warning(t("clients.token_once", label=shown[0]), icon=":material/key:")
    st.code(shown[1], language=None)

items = cache.safe(cache.api().clients, ttl=5.0)() or []
records = tv.records(items)
for label, limit, used in tv.near_limit(items):
    st.info(t("clients.near_limit", label=label, limit=limit, share=f"{used:.0%}"), icon=":material/speed:")
if records:
    df = tv.frame(items, lambda name: t(f"clients.limit.{name}"))
    df["class"] = df["class"].map(lambda c: t(f"clients.class.{c}") if c else "")
    labels = {c: t(f"clients.col.{c}") for c in df.columns}
    st.dataframe(df, hide_index=True, width="stretch", key="tbl_clients", column_config=labels)
else:
    st.info(t("clients.none"))


def act(fn, done: str) -> None:  # type: ignore[no-untyped-def]
    try:
        answer = fn()
    except AdminError as exc:
        cache.show_error(exc)
        return
    if isinstance(answer, dict) and answer.get("token"):
        st.session_state[NEW_TOKEN] = (answer.get("label", ""), answer["token"])
    dialogs.flash(done)
    cache.bump()
    st.rerun()


with st.container(border=True):
    st.subheader(t("clients.create"))
    with st.form("client_create", clear_on_submit=True):
        c1, c2, c3 = st.columns([2, 1, 2])
        label = c1.text_input(t("clients.f.label"), key="client_label")
        cls = c2.selectbox(
            t("clients.f.class"), tv.CLASSES, index=1, format_func=lambda c: t(f"clients.class.{c}"), key="client_cls"
        )
        owner = c3.text_input(t("clients.f.owner"), key="client_owner")
        models = st.text_input(t("clients.f.models"), key="client_models", placeholder="gemini-2.5-flash, ...")
        cols = st.columns(len(tv.LIMITS))
        limits = {
            name: int(cols[i].number_input(t(f"clients.limit.{name}"), min_value=0, step=1, key=f"client_lim_{name}"))
            for i, name in enumerate(tv.LIMITS)
        }
        expires = st.date_input(t("clients.f.expires"), value=None, key="client_expires")
        st.caption(t("clients.limits_note"))
        if st.form_submit_button(t("clients.create_button"), type="primary", icon=":material/person_add:"):
            if not label.strip():
                st.error(t("clients.label_required"))
            else:
                body = tv.create_body(
                    label, cls, owner, models, limits, f"{expires.isoformat()}T00:00:00Z" if expires else None
                )
                act(lambda: cache.api().create_client(body), t("clients.created", label=label.strip()))

active = [c for c in records if c.get("status") == "active"]
if active:
    with st.container(border=True):
        st.subheader(t("clients.manage"))
        names = {c["id"]: f"{c['label']} ({c['id']})" for c in active}
        chosen = st.selectbox(t("clients.f.client"), list(names), format_func=names.__getitem__, key=wkey("client"))
        c1, c2, c3 = st.columns([2, 1, 1], vertical_alignment="bottom")
        grace = c1.number_input(
            t("clients.f.grace"), min_value=0, max_value=30 * 86400, value=3600, step=60, key="client_grace"
        )
        if c2.button(t("clients.rotate"), icon=":material/autorenew:", key="client_rotate", width="stretch"):
            act(lambda: cache.api().rotate_client(chosen, grace), t("clients.rotated", label=names[chosen]))
        confirm = st.checkbox(t("clients.confirm_revoke"), key="client_confirm")
        if c3.button(
            t("clients.revoke"), icon=":material/block:", key="client_revoke", disabled=not confirm, width="stretch"
        ):
            act(lambda: cache.api().revoke_client(chosen), t("clients.revoked", label=names[chosen]))
