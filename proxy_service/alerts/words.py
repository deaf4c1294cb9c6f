"""The alert words that both the notices (`alerts/notify.py`) and the dashboard (`dashboard/logic/i18n.py`) show,
in one catalogue: a state reads the same in a message and on the Alerts page, in English and in 简体中文."""

from __future__ import annotations

WORDS: dict[str, dict[str, str]] = {
    "en": {
        "firing": "firing",
        "pending": "pending",
        "resolved": "resolved",
        "value": "value",
        "threshold": "threshold",
        "labels": "labels",
        "since": "since",
    },
    "zh": {
        "firing": "告警中",
        "pending": "待定",
        "resolved": "已恢复",
        "value": "当前值",
        "threshold": "阈值",
        "labels": "标签",
        "since": "开始于",
    },
}
