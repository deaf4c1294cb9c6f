"""Monitor's pool headroom panel: per model, then per (project, model), RPM / RPD / TPM used vs limit with the
limit's source, cooling until when and why, and when capacity frees up. Tightest on top (the API's order)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard.logic import cache, fmt, times
from dashboard.logic.i18n import EN, t

DIMS = ("rpm", "rpd", "tpm")


def usage_text(used: Any, limit: Any, source: Any) -> str:
    """ "12 / 15 (learned)": used vs limit with where the limit comes from; no limit → "12 / –"."""
    text = f"{fmt.fmt_int(used)} / {fmt.fmt_int(limit) if limit is not None and not pd.isna(limit) else '–'}"
    if isinstance(source, str) and source:
        text += f" ({t(f'source.{source}') if f'source.{source}' in EN else source})"
    return text


def clock(col: pd.Series) -> pd.Series:
    """Times as "HH:MM" today in the display zone, "MM-DD HH:MM" on other days; blank when none."""
    local = times.local(col)
    today = times.today()
    return local.map(lambda ts: "" if pd.isna(ts) else ts.strftime("%H:%M" if ts.date() == today else "%m-%d %H:%M"))


def scope_frame(scopes: pd.DataFrame) -> pd.DataFrame:
    if scopes.empty:
        return pd.DataFrame()
    cooling = clock(scopes["cooling_until"])
    reasons = scopes["cooling_reason"].map(
        lambda r: (t(f"cooling.{r}") if f"cooling.{r}" in EN else r) if isinstance(r, str) and r else ""
    )
    out = pd.DataFrame(
        {
            "model": scopes["model"],
            "project": [fmt.text(p) or fmt.text(s) for p, s in zip(scopes["project"], scopes["scope"], strict=True)],
            "keys": scopes["keys"],
            "headroom": scopes["headroom"].astype(float),
            **{
                d: [
                    usage_text(u, lim, src)
                    for u, lim, src in zip(
                        scopes[f"{d}_used"],
                        scopes[f"{d}_limit"],
                        scopes.get(f"{d}_source", [None] * len(scopes)),
                        strict=True,
                    )
                ]
                for d in DIMS
            },
            "cooling": [f"{c} · {r}" if c else "" for c, r in zip(cooling, reasons, strict=True)],
            "frees_at": clock(scopes["frees_at"]),
        }
    )
    return out


def model_frame(models: pd.DataFrame) -> pd.DataFrame:
    if models.empty:
        return pd.DataFrame()
    return pd.DataFrame(
        {
            "model": models["model"],
            "open": [f"{o} / {n}" for o, n in zip(models["open_scopes"], models["scopes"], strict=True)],
            "headroom": models["headroom"].astype(float),
            **{
                d: [usage_text(u, lim, None) for u, lim in zip(models[f"{d}_used"], models[f"{d}_limit"], strict=True)]
                for d in DIMS
            },
            "frees_at": clock(models["frees_at"]),
        }
    )


def columns() -> dict[str, Any]:
    cc = st.column_config
    return {
        "model": cc.TextColumn(t("headroom.col_model"), width="medium"),
        "project": cc.TextColumn(t("headroom.col_project"), width="medium"),
        "keys": cc.NumberColumn(t("headroom.col_keys"), width="small", format="localized"),
        "open": cc.TextColumn(t("headroom.col_open"), width="small", help=t("headroom.help_open")),
        "headroom": cc.ProgressColumn(
            t("headroom.col_headroom"), min_value=0.0, max_value=1.0, format="percent", help=t("headroom.help")
        ),
        "rpm": cc.TextColumn(t("headroom.col_rpm"), width="medium"),
        "rpd": cc.TextColumn(t("headroom.col_rpd"), width="medium"),
        "tpm": cc.TextColumn(t("headroom.col_tpm"), width="medium"),
        "cooling": cc.TextColumn(t("headroom.col_cooling"), width="medium"),
        "frees_at": cc.TextColumn(t("headroom.col_frees"), width="small", help=t("headroom.help_frees")),
    }


def panel(ttl: float) -> None:
    st.subheader(t("headroom.title"))
    data = cache.safe(cache.api().pool_headroom, ttl=ttl)()
    if data is None:
        return
    models, scopes = data["models"], data["scopes"]
    if scopes.empty:
        st.caption(t("headroom.none"))
        return
    cooling = int(scopes["cooling_until"].notna().sum())
    st.caption(t("headroom.summary", models=len(models), scopes=len(scopes), n=cooling))
    st.dataframe(model_frame(models), hide_index=True, width="stretch", column_config=columns(), key="tbl_headroom_m")
    st.dataframe(scope_frame(scopes), hide_index=True, width="stretch", column_config=columns(), key="tbl_headroom_s")
