"""Translations: every label, message and chart title on screen goes through `t("key")`.

English is the reference; Simplified Chinese must define the same keys (a test checks both ways and checks that
every `t("...")` literal in the dashboard exists). Placeholders use str.format: t("keys.added", n=3).

One language setting, two levels (`session_language`):
- the Config page's `language` is the default: what a browser that has not chosen a language gets;
- the sidebar's selector is this browser's own choice: it wins over the default and is remembered in a cookie
  (COOKIE), so a reload or a new tab keeps it. A link may carry `?lang=zh` (or `en`): that is a choice too.
"""

from __future__ import annotations

from typing import Any

from proxy_service.alerts.words import WORDS

LANGUAGES = {"en": "English", "zh": "简体中文"}
DEFAULT = "en"
COOKIE = "keyrack_lang"  # this browser's own choice (set by the sidebar's selector)
PARAM = "lang"  # a link's choice: ?lang=zh
COOKIE_DAYS = 400  # browsers cap a cookie's life at 400 days

try:  # the dashboard runs under Streamlit; tools and tests may import this without a session
    import streamlit as st
except ImportError:  # pragma: no cover
    st = None  # type: ignore[assignment]


_last = DEFAULT  # the language of the latest script run, for calls made outside one


def current() -> str:
    """The session's language. Outside a script run (plain Python, or AppTest formatting a widget's options in
    the test's thread) there is no session: the language of the latest run is used."""
    global _last
    if st is None:
        return DEFAULT
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        if get_script_run_ctx(suppress_warning=True) is None:
            return _last
        lang = st.session_state.get("lang", DEFAULT)
    except Exception:
        return _last
    _last = lang if lang in STRINGS else DEFAULT
    return _last


_default = DEFAULT  # the Config page's `language`, as this dashboard process last read it


def remember_default(lang: Any) -> None:
    """Note the proxy's configured default language (read with its config): a new session starts in it."""
    global _default
    if lang in LANGUAGES:
        _default = str(lang)


def default_language() -> str:
    return _default


def chosen_language(param: Any, cookie: Any) -> str | None:
    """A browser's own choice: the link's `?lang=`, else the cookie the sidebar's selector set; None when neither
    names a known language (the session then follows the configured default)."""
    for value in (param, cookie):
        if isinstance(value, str) and value in LANGUAGES:
            return value
    return None


def choices_placeholder(options: Any) -> str:
    """A multiselect's placeholder in the session's language (Streamlit's own is English)."""
    return t("common.choose_options") if len(options) else t("common.no_options")


def label_of(prefix: str, value: Any) -> str:
    """An enum id (an outcome, an error type) as a reader says it; unknown ids as they are, blanks as "–"."""
    if value is None or value == "":
        return "–"
    key = f"{prefix}.{value}"
    return t(key) if key in EN else str(value)


def cookie_script(lang: str) -> str:
    """The script that remembers `lang` as this browser's choice (a first-party cookie read by the next session)."""
    if lang not in LANGUAGES:
        lang = DEFAULT
    age = COOKIE_DAYS * 86400
    return f'<script>document.cookie = "{COOKIE}={lang}; path=/; max-age={age}; SameSite=Lax";</script>'


def t(key: str, /, **kw: Any) -> str:
    """The text for `key` in the session's language (falls back to English, then to the key itself).

    Keyword arguments fill the placeholders; `_lang="zh"` picks a language explicitly. When `n` (or `total`) is 1
    and a `<key>.one` text exists, that singular form is used.
    """
    table = STRINGS.get(kw.pop("_lang", None) or current(), STRINGS[DEFAULT])
    if f"{key}.one" in EN and str(kw.get("n", kw.get("total"))) == "1":  # "1 setting", not "1 settings"
        key = f"{key}.one"
    text = table.get(key) or STRINGS[DEFAULT].get(key) or key
    if kw:
        try:
            return text.format(**kw)
        except (KeyError, IndexError, ValueError):
            return text
    return text


def wkey(name: str) -> str:
    """The key of a widget whose options are formatted through t(): one per language.

    Streamlit keeps a selectbox's (or multiselect's, segmented control's) value as the option's formatted text; after
    a language switch the old text matches no option, so the widget shows English until the next rerun. A key per
    language gives the widget a fresh identity; `carry_widgets` moves the chosen values across.
    """
    return f"{name}.{current()}"


def carry_widgets(old: str, new: str) -> None:
    """Copy the values of `wkey` widgets from language `old` to `new` (call from the language selector's callback,
    before any widget of the new run exists)."""
    if st is None or old == new:
        return
    suffix = f".{old}"
    for name in [k for k in st.session_state if isinstance(k, str) and k.endswith(suffix)]:
        st.session_state[f"{name[: -len(suffix)]}.{new}"] = st.session_state[name]


EN: dict[str, str] = {}
ZH: dict[str, str] = {}
STRINGS: dict[str, dict[str, str]] = {"en": EN, "zh": ZH}


def _add(key: str, en: str, zh: str) -> None:
    EN[key] = en
    ZH[key] = zh


# fmt: off
# -- app chrome, login ------------------------------------------------------------------------------------------
_add("app.title", "Keyrack", "Keyrack")
_add("app.tagline", "Gemini key pool gateway", "Gemini 密钥池网关")
_add("nav.monitor", "Monitor", "监控")
_add("nav.trends", "Trends", "趋势")
_add("nav.errors", "Error logs", "错误日志")
_add("nav.config", "Config", "配置")
_add("nav.sql", "SQL", "SQL 查询")
_add("nav.explore", "Explore", "多维分析")
_add("chrome.language", "Language", "语言")
_add("chrome.language_help", "Your choice for this browser: remembered across reloads and tabs. A browser that has "
     "not chosen shows the default language set on the Config page.",
     "此浏览器的选择：刷新页面或打开新标签页后保持不变。未选择语言的浏览器显示配置页中设置的默认语言。")
_add("chrome.refresh", "Refresh", "刷新")
_add("chrome.auto_refresh", "Auto-refresh (Monitor)", "自动刷新（监控页）")
_add("chrome.auto_off", "Off", "关闭")
_add("chrome.every_s", "every {n} s", "每 {n} 秒")
_add("chrome.connected", "Connected to {url}", "已连接 {url}")
_add("chrome.disconnected", "Not connected: {msg}", "未连接：{msg}")
_add("chrome.logout", "Sign out", "退出登录")
_add("chrome.timezone", "Times in {tz}", "时间显示时区：{tz}")
_add("login.title", "Sign in to Keyrack", "登录 Keyrack")
_add("login.intro", "Enter the proxy's admin token (KEYRACK_ADMIN_TOKEN).", "请输入代理的管理令牌（KEYRACK_ADMIN_TOKEN）。")
_add("login.token", "Admin token", "管理令牌")
_add("login.submit", "Sign in", "登录")
_add("login.empty", "Enter the admin token first.", "请先输入管理令牌。")
_add("login.wrong_token", "The admin token was not accepted. Check KEYRACK_ADMIN_TOKEN.",
     "管理令牌无效，请检查 KEYRACK_ADMIN_TOKEN。")
_add("login.unreachable", "Cannot reach the proxy at {url}. Is `keyrack serve` running?",
     "无法连接代理 {url}。请确认 `keyrack serve` 正在运行。")
_add("login.no_token_configured", "The proxy has no admin token configured, so its admin API is closed. Set KEYRACK_ADMIN_TOKEN and restart it.",
     "代理未配置管理令牌，管理接口已关闭。请设置 KEYRACK_ADMIN_TOKEN 并重启代理。")
# -- errors (AdminError.kind) ------------------------------------------------------------------------------------
_add("error.unreachable", "The proxy cannot be reached.", "无法连接代理。")
_add("error.unauthorized", "The admin token was rejected; sign in again.", "管理令牌被拒绝，请重新登录。")
_add("error.timeout", "The proxy did not answer in time.", "代理响应超时。")
_add("error.invalid", "Some values are not valid.", "部分取值无效。")
_add("error.not_found", "Not found (it may have just been deleted).", "未找到（可能刚被删除）。")
_add("error.server", "The proxy reported an internal error.", "代理内部错误。")
_add("error.api", "The proxy refused the request.", "代理拒绝了该请求。")
_add("error.detail", "Details: {msg}", "详情：{msg}")
# -- the proxy's machine-readable error reasons (error.reason in the admin API's answers) --------------------------
_add("reason.sql_empty", "Write a query first.", "请先输入查询。")
_add("reason.sql_required", "Write a query first.", "请先输入查询。")
_add("reason.query_not_allowed", "Query not allowed: {detail}", "不允许执行该查询：{detail}")
_add("reason.query_failed", "Query failed: {detail}", "查询失败：{detail}")
_add("reason.query_timeout", "Query interrupted at the time limit: {detail}", "查询超过时间上限，已中断：{detail}")
_add("reason.query_too_costly", "Query too costly: {detail}", "查询占用内存过多：{detail}")
_add("reason.sql_unavailable", "SQL is unavailable for now: {detail}", "SQL 查询暂不可用：{detail}")
_add("reason.explore_timeout", "Explore stopped at the time limit: {detail}", "多维分析超过时间上限，已中断：{detail}")
_add("reason.explore_busy", "Explore is busy: {detail}", "多维分析繁忙：{detail}")
_add("reason.invalid_value", "Invalid value for {field}: {detail}", "{field} 的取值无效：{detail}")
_add("reason.invalid_body", "The request body is not valid JSON: {detail}", "请求体不是有效的 JSON：{detail}")
_add("reason.not_found", "Not found: {detail}", "未找到：{detail}")
_add("reason.range_reversed", "The start must be before the end.", "开始时间必须早于结束时间。")
_add("reason.admin_disabled", "The proxy has no admin token configured, so its admin API is closed.",
     "代理未配置管理令牌，管理接口已关闭。")
_add("reason.unauthorized", "The admin token was not accepted.", "管理令牌无效。")
_add("reason.invalid_config", "Some settings are not valid.", "部分设置无效。")
_add("reason.not_saved", "Not saved: {detail}", "未保存：{detail}")
_add("reason.internal", "Internal error in the proxy; see its log.", "代理内部错误，请查看其日志。")
_add("reason.too_many_buckets", "Too many buckets in that range: choose a coarser granularity.",
     "该范围内的时间桶过多：请选择更粗的粒度。")
# -- common ----------------------------------------------------------------------------------------------------
_add("common.close", "Close", "关闭")
_add("common.scroll_sideways", "↔ {n} of {total} columns are out of view: scroll the table sideways (shift + wheel, or drag its bottom scrollbar).", "↔ {total} 列中有 {n} 列不在视野内：请左右滚动表格（Shift + 滚轮，或拖动底部滚动条）。")
_add("common.cancel", "Cancel", "取消")
_add("common.confirm", "Confirm", "确认")
_add("common.confirm_title", "Please confirm", "请确认")
_add("common.all", "All", "全部")
_add("common.no_key", "(no key: refused / unauthorised)", "（无密钥：被拒绝 / 未授权）")
_add("common.choose", "Choose…", "请选择…")
_add("common.page", "Page", "页码")
_add("common.page_size", "Rows per page", "每页行数")
_add("common.page_of", "Page {page} of {pages} · {total} rows", "第 {page} / {pages} 页 · 共 {total} 行")
_add("common.page_of.one", "Page {page} of {pages} · {total} row", "第 {page} / {pages} 页 · 共 {total} 行")
_add("common.none", "Nothing to show.", "暂无数据。")
_add("common.dismiss", "Dismiss", "关闭提示")
_add("common.download_csv", "Download CSV", "下载 CSV")
_add("common.download_parquet", "Download Parquet", "下载 Parquet")
_add("common.yes", "Yes", "是")
_add("common.no", "No", "否")
_add("common.from", "From", "开始")
_add("common.to", "To", "结束")
_add("common.date_range", "Date range", "日期范围")
# -- key statuses --------------------------------------------------------------------------------------------
_add("status.active", "Active", "可用")
_add("status.cooling", "Cooling", "冷却中")
_add("status.invalid", "Invalid", "无效")
_add("status.disabled", "Disabled", "已禁用")
# -- monitor ---------------------------------------------------------------------------------------------------
_add("monitor.title", "Monitor", "监控")
_add("monitor.keys_heading", "Keys", "密钥")
_add("monitor.calls_heading", "Calls", "调用")
_add("monitor.quality_heading", "Last 24 hours", "最近 24 小时")
_add("monitor.keys_status", "{status} keys", "{status}密钥")
_add("monitor.calls_1m", "Calls · last minute", "调用 · 最近 1 分钟")
_add("monitor.calls_1h", "Calls · last hour", "调用 · 最近 1 小时")
_add("monitor.calls_24h", "Calls · last 24 h", "调用 · 最近 24 小时")
_add("monitor.calls_month", "Calls · this month", "调用 · 本月")
_add("monitor.failures_delta", "{n} failed", "失败 {n}")
_add("monitor.success_rate", "Success rate", "成功率")
_add("monitor.avg_latency", "Average latency", "平均延迟")
_add("monitor.p95_latency", "p95 latency", "p95 延迟")
_add("monitor.tokens_24h", "Tokens · 24 h", "Token · 24 小时")
_add("monitor.tokens_month", "This month: {n}", "本月：{n}")
_add("monitor.search", "Search (id, label, masked key or its last 4 characters)", "搜索（ID、标签、掩码密钥或末 4 位）")
_add("monitor.filter_status", "Status", "状态")
_add("monitor.filter_project", "Project", "项目")
_add("monitor.filter_created", "Created between", "创建时间")
_add("monitor.filter_failures", "Failures ≥", "失败次数 ≥")
_add("monitor.add_keys", "Add keys", "添加密钥")
_add("headroom.title", "Pool headroom", "号池剩余额度")
_add("headroom.none", "No model has been used in the last 24 h and nothing is cooling.",
     "最近 24 小时没有模型被调用，也没有冷却中的项目。")
_add("headroom.summary", "{models} models in {scopes} (project, model) pairs · {n} cooling · tightest first",
     "{models} 个模型，{scopes} 个（项目，模型）组合 · {n} 个冷却中 · 最紧张的在前")
_add("headroom.col_model", "Model", "模型")
_add("headroom.col_project", "Project", "项目")
_add("headroom.col_keys", "Keys", "密钥数")
_add("headroom.col_open", "Open", "可用")
_add("headroom.help_open", "Projects that can take a call now / projects in use", "现在可以接受调用的项目数 / 使用中的项目数")
_add("headroom.col_headroom", "Headroom", "剩余额度")
_add("headroom.help", "Free share of the tightest known limit (RPM, RPD or TPM)", "已知最紧限制（RPM、RPD 或 TPM）的剩余比例")
_add("headroom.col_rpm", "RPM used / limit", "RPM 已用 / 上限")
_add("headroom.col_rpd", "RPD used / limit", "RPD 已用 / 上限")
_add("headroom.col_tpm", "TPM used / limit", "TPM 已用 / 上限")
_add("headroom.col_cooling", "Cooling until", "冷却至")
_add("headroom.col_frees", "Frees at", "恢复时间")
_add("headroom.help_frees", "When a call can go through again (cooldown end or a limit's window)",
     "何时可以再次调用（冷却结束或限额窗口滚动）")
_add("source.configured", "configured", "已配置")
_add("source.learned", "learned", "已学习")
_add("source.builtin", "built-in (guess)", "内置（估计）")
_add("cooling.minute", "per-minute limit", "每分钟限额")
_add("cooling.day", "per-day limit", "每日限额")
_add("cooling.tokens", "token limit", "Token 限额")
_add("cooling.unknown", "429 without details", "未注明原因的 429")
_add("monitor.cooling_item", "{model} until {until}", "{model}（至 {until}）")
_add("monitor.active_section", "Active keys ({n})", "可用密钥（{n}）")
_add("monitor.inactive_section", "Invalid and disabled keys ({n})", "无效与已禁用密钥（{n}）")
_add("monitor.hidden_by_filter", "Hidden by the status filter.", "已被状态筛选隐藏。")
_add("monitor.select_hint", "Select rows for actions: one row for key actions, several for batch actions.",
     "勾选行以操作：选中一行可进行单个密钥操作，选中多行可批量操作。")
_add("monitor.col_id", "Id", "ID")
_add("monitor.col_label", "Label", "标签")
_add("monitor.col_project", "Project", "项目")
_add("monitor.col_status", "Status", "状态")
_add("monitor.col_key", "Key", "密钥")
_add("monitor.col_requests", "Requests", "请求数")
_add("monitor.col_success", "Success rate", "成功率")
_add("monitor.col_failures", "Failures (streak / total)", "失败（连续 / 总计）")
_add("monitor.col_last_used", "Last used", "最近使用")
_add("monitor.col_created", "Created", "创建时间")
_add("monitor.col_last_error", "Last error", "最近错误")
_add("monitor.col_cooling", "Cooling", "冷却")
_add("monitor.selected_one", "Selected key {key}", "已选密钥 {key}")
_add("monitor.selected_many", "{n} keys selected", "已选 {n} 个密钥")
_add("monitor.verify", "Verify", "验证")
_add("monitor.reset", "Reset", "重置")
_add("monitor.copy", "Copy key", "复制密钥")
_add("monitor.details", "Details", "详情")
_add("monitor.enable", "Enable", "启用")
_add("monitor.disable", "Disable", "禁用")
_add("monitor.delete", "Delete", "删除")
_add("monitor.batch_verify", "Verify {n}", "验证 {n} 个")
_add("monitor.batch_enable", "Enable {n}", "启用 {n} 个")
_add("monitor.batch_disable", "Disable {n}", "禁用 {n} 个")
_add("monitor.batch_reset", "Reset {n}", "重置 {n} 个")
_add("monitor.batch_delete", "Delete {n}", "删除 {n} 个")
_add("monitor.confirm_delete_one", "Delete key {key}? Its secret is removed from the pool; past call records stay.",
     "删除密钥 {key}？密钥将从池中移除，历史调用记录保留。")
_add("monitor.confirm_delete_many", "Delete {n} keys? Their secrets are removed from the pool; past call records stay.",
     "删除 {n} 个密钥？密钥将从池中移除，历史调用记录保留。")
_add("monitor.batch_progress", "{action}: {done} of {n}", "{action}：{done} / {n}")
_add("monitor.batch_result", "{action}: {ok} succeeded, {failed} failed.", "{action}：成功 {ok} 个，失败 {failed} 个。")
_add("monitor.batch_failures", "Failed keys", "失败的密钥")
_add("monitor.action_done", "{action} {key}: {msg}", "{action} {key}：{msg}")
_add("monitor.ok", "done", "完成")
_add("monitor.reveal_title", "Copy key", "复制密钥")
_add("monitor.reveal_note", "The full secret of {key}. Use the copy icon at the right of the box; close this dialog when done.",
     "{key} 的完整密钥。点击框右侧的复制图标复制，完成后关闭此对话框。")
_add("monitor.details_title", "Key details", "密钥详情")
_add("monitor.usage_by_model", "Usage by model", "按模型用量")
_add("monitor.recent_calls", "Recent calls", "最近调用")
_add("monitor.cooldowns", "Cooldowns", "冷却")
_add("monitor.headroom", "Headroom", "剩余额度")
_add("monitor.no_cooldowns", "No cooldown: every model is usable.", "没有冷却：所有模型均可使用。")
_add("monitor.last_error", "Last error: {msg}", "最近错误：{msg}")
_add("monitor.add_title", "Add keys", "添加密钥")
_add("monitor.add_text", "Paste keys (one per line, `project:key`, or any text containing AIza… keys)",
     "粘贴密钥（每行一个，支持 `项目:密钥`，或任何包含 AIza… 密钥的文本）")
_add("monitor.add_project", "Project (optional, for keys without one)", "项目（可选，用于未指定项目的密钥）")
_add("monitor.add_label", "Label (optional)", "标签（可选）")
_add("monitor.add_submit", "Add", "添加")
_add("monitor.add_result", "Added {added} · duplicates {duplicates} · rejected {rejected}",
     "新增 {added} · 重复 {duplicates} · 拒绝 {rejected}")
_add("monitor.add_empty", "Paste at least one key.", "请至少粘贴一个密钥。")
_add("monitor.no_keys", "No keys here.", "这里没有密钥。")
# -- trends ----------------------------------------------------------------------------------------------------
_add("trends.title", "Trends", "趋势")
_add("trends.granularity", "Granularity", "粒度")
_add("gran.hour", "Hour", "小时")
_add("gran.day", "Day", "天")
_add("gran.week", "Week", "周")
_add("gran.month", "Month", "月")
_add("trends.breakdown", "Break down by", "拆分维度")
_add("trends.breakdown_heading", "Breakdown", "拆分")
_add("dim.none", "Nothing", "不拆分")
_add("dim.model", "Model", "模型")
_add("dim.key", "Key", "密钥")
_add("dim.project", "Project", "项目")
_add("dim.status", "Status", "状态")
_add("trends.top_keys", "Top keys", "密钥排行")
_add("trends.top_models", "Top models", "模型排行")
_add("trends.no_data", "No calls in this range.", "该时间范围内没有调用。")
_add("trends.range_too_long", "Hourly buckets over {days} days would be slow to draw; showing the last {max} days.",
     "按小时统计 {days} 天数据过多，仅显示最近 {max} 天。")
_add("chart.calls", "Calls: success vs failure", "调用：成功与失败")
_add("chart.success_rate", "Success rate", "成功率")
_add("chart.latency", "Latency p50 / p95", "延迟 p50 / p95")
_add("chart.tokens", "Tokens", "Token 用量")
_add("chart.calls_by", "Calls by {dim}", "按{dim}的调用数")
_add("chart.spend_title", "Estimated spend (USD)", "估算费用（美元）")
_add("chart.spend", "Spend (paid tier)", "费用（付费层级）")
_add("chart.list_spend", "At list price (all calls)", "按标价计（全部调用）")
_add("chart.usd", "USD", "美元")
_add("trends.spend_range", "Estimated spend in this range", "该时间范围内的估算费用")
_add("trends.list_spend_range", "{usd} at list price", "按标价计 {usd}")
_add("trends.month_end", "This month at the last 24 hours' rate: {usd} (at list price {list})",
     "按最近 24 小时的速率，本月预计：{usd}（按标价计 {list}）")
_add("chart.tokens_by", "Tokens by {dim}", "按{dim}的 Token 用量")
_add("chart.success", "Success", "成功")
_add("chart.upstream_429", "429 from Google", "Google 返回的 429")
_add("chart.refused", "Refused by Keyrack", "Keyrack 主动拒绝")
_add("chart.refusals", "Rate limits: Google's 429s vs Keyrack's refusals", "限流：Google 的 429 与 Keyrack 的拒绝")
_add("chart.attempts_per_success", "Upstream attempts per successful call", "每次成功调用的上游尝试次数")
_add("chart.ratio", "Attempts", "尝试次数")
_add("chart.outcomes", "Calls by outcome", "按结果的调用数")
_add("chart.statuses", "Calls by HTTP status", "按 HTTP 状态的调用数")
_add("trends.story_heading", "The 429 story", "429 分析")
_add("trends.story_intro", "Keyrack refuses a call itself (429, with the real wait) when every key of the model is cooling or out of a known limit; Google's own 429s are the ones the pool could not foresee.",
     "当某模型的所有密钥都在冷却或已达已知限额时，Keyrack 会直接拒绝（429，并给出真实等待时间）；Google 返回的 429 则是号池无法预见的。")
_add("outcome.success", "success", "成功")
_add("outcome.client_error", "client error", "客户端错误")
_add("outcome.upstream_error", "upstream error", "上游错误")
_add("outcome.exhausted", "refused (no key free)", "拒绝（无可用密钥）")
_add("outcome.unauthorized", "unauthorised", "未授权")
_add("outcome.timeout", "timeout", "超时")
_add("outcome.cancelled", "cancelled", "已取消")
_add("outcome.proxy_error", "proxy error", "代理错误")
_add("chart.failure", "Failure", "失败")
_add("chart.p50", "p50", "p50")
_add("chart.p95", "p95", "p95")
_add("chart.time", "Time ({tz})", "时间（{tz}）")
_add("chart.count", "Calls", "调用数")
_add("chart.ms", "Milliseconds", "毫秒")
_add("chart.rate", "Success rate", "成功率")
_add("chart.token_count", "Tokens", "Token 数")
_add("col.calls", "Calls", "调用数")
_add("col.successes", "Successes", "成功")
_add("col.failures", "Failures", "失败")
_add("col.success_rate", "Success rate", "成功率")
_add("col.avg_latency", "Avg latency (ms)", "平均延迟（毫秒）")
_add("col.p95_latency", "p95 latency (ms)", "p95 延迟（毫秒）")
_add("col.tokens", "Tokens", "Token 数")
_add("col.name", "Name", "名称")
_add("col.model", "Model", "模型")
_add("col.time", "Time", "时间")
_add("col.status", "Status", "状态")
_add("col.latency", "Latency (ms)", "延迟（毫秒）")
_add("col.outcome", "Outcome", "结果")
_add("col.scope", "Scope", "作用域")
_add("col.until", "Until", "截止")
_add("col.reason", "Reason", "原因")
_add("col.avg_latency_ms", "Avg latency (ms)", "平均延迟（毫秒）")
_add("col.p50_latency_ms", "p50 latency (ms)", "p50 延迟（毫秒）")
_add("col.p95_latency_ms", "p95 latency (ms)", "p95 延迟（毫秒）")
_add("col.prompt_tokens", "Prompt tokens", "输入 Token")
_add("col.output_tokens", "Output tokens", "输出 Token")
_add("col.total_tokens", "Total tokens", "总 Token")
_add("col.last_ts", "Last call", "最近调用")
_add("col.ts", "Time", "时间")
_add("col.request_id", "Request id", "请求 ID")
_add("col.surface", "Surface", "接口")
_add("col.operation", "Operation", "操作")
_add("col.stream", "Stream", "流式")
_add("col.attempts", "Attempts", "尝试次数")
_add("col.latency_ms", "Latency (ms)", "延迟（毫秒）")
_add("col.ttfb_ms", "First byte (ms)", "首字节（毫秒）")
_add("col.error_status", "Error status", "错误状态")
_add("col.error_message", "Error message", "错误消息")
_add("col.quota_id", "Quota id", "配额 ID")
_add("col.rpm_used", "Requests this minute", "本分钟请求数")
_add("col.rpm_limit", "RPM limit", "每分钟请求上限")
_add("col.rpd_used", "Requests today", "今日请求数")
_add("col.rpd_limit", "RPD limit", "每日请求上限")
_add("col.tpm_used", "Tokens this minute", "本分钟 Token")
_add("col.tpm_limit", "TPM limit", "每分钟 Token 上限")
_add("col.headroom", "Headroom", "剩余额度")
_add("col.label", "Label", "标签")
_add("col.project", "Project", "项目")
_add("col.id", "Id", "ID")
_add("col.message", "Message", "消息")
_add("col.ok", "OK", "成功")
# -- error logs ------------------------------------------------------------------------------------------------
_add("errors.title", "Error logs", "错误日志")
_add("errors.key", "Key id", "密钥 ID")
_add("errors.model", "Model", "模型")
_add("errors.status", "HTTP status", "HTTP 状态码")
_add("errors.type", "Error type", "错误类型")
_add("errors.q", "Text search", "全文搜索")
_add("errors.count", "{total} matching entries", "共 {total} 条匹配")
_add("errors.count.one", "{total} matching entry", "共 {total} 条匹配")
_add("errors.col_time", "Time", "时间")
_add("errors.col_key", "Key", "密钥")
_add("errors.col_model", "Model", "模型")
_add("errors.col_status", "Status", "状态码")
_add("errors.col_type", "Type", "类型")
_add("errors.col_message", "Message", "消息")
_add("errors.col_request", "Request id", "请求 ID")
_add("errors.details", "Details", "详情")
_add("errors.delete_selected", "Delete selected ({n})", "删除所选（{n}）")
_add("errors.delete_matching", "Delete all matching ({n})", "删除全部匹配（{n}）")
_add("errors.older_than", "Older than", "早于")
_add("errors.delete_older", "Delete older", "删除更早的")
_add("errors.delete_heading", "Delete entries…", "删除条目…")
_add("errors.delete_caption", "Deleting cannot be undone; each delete asks for confirmation first.",
     "删除无法撤销；每次删除前都会先请求确认。")
_add("errors.confirm_selected", "Delete {n} selected error log entries?", "删除所选的 {n} 条错误日志？")
_add("errors.confirm_selected.one", "Delete {n} selected error log entry?", "删除所选的 {n} 条错误日志？")
_add("errors.confirm_matching", "Delete all {n} entries matching the current filter?", "删除当前筛选匹配的全部 {n} 条错误日志？")
_add("errors.confirm_matching.one", "Delete the {n} entry matching the current filter?", "删除当前筛选匹配的 {n} 条错误日志？")
_add("errors.confirm_older", "Delete every entry older than {date}?", "删除 {date} 之前的全部错误日志？")
_add("errors.deleted", "Deleted {n} entries.", "已删除 {n} 条。")
_add("errors.deleted.one", "Deleted {n} entry.", "已删除 {n} 条。")
_add("errors.detail_title", "Error details", "错误详情")
_add("errors.message", "Message", "消息")
_add("errors.upstream_body", "Upstream body", "上游响应体")
_add("errors.stack_trace", "Stack trace", "堆栈跟踪")
_add("errors.request_body", "Request body", "请求体")
_add("errors.not_recorded", "Not recorded.", "未记录。")
_add("errors.request_body_off", "Not recorded (turn on “log_request_bodies” in Config to keep them).",
     "未记录（可在配置中开启 “log_request_bodies”）。")
_add("errors.meta", "Time {ts} · key {key} · model {model} · status {status} · type {type} · request {request}",
     "时间 {ts} · 密钥 {key} · 模型 {model} · 状态 {status} · 类型 {type} · 请求 {request}")
# -- config ----------------------------------------------------------------------------------------------------
_add("config.title", "Config", "配置")
_add("config.section.general", "General", "常规")
_add("config.section.upstream", "Gemini upstream & pool", "Gemini 上游与密钥池")
_add("config.section.logging", "Logging & retention", "日志与保留")
_add("config.section.routing", "Routing & cost", "路由与费用")
_add("config.section.other", "Other", "其他")
_add("config.save", "Save", "保存")
_add("config.discard", "Discard changes", "放弃修改")
_add("config.reset", "Reset to defaults", "恢复默认")
_add("config.confirm_reset", "Reset every setting to its default (environment / .env) value?", "将所有设置恢复为默认值（环境变量 / .env）？")
_add("config.unsaved", "{n} unsaved changes", "{n} 项未保存的修改")
_add("config.unsaved.one", "{n} unsaved change", "{n} 项未保存的修改")
_add("config.no_changes", "No unsaved changes.", "没有未保存的修改。")
_add("config.changed", "● changed (saved value: {old})", "● 已修改（已保存的值：{old}）")
_add("config.saved", "Saved {n} settings; they apply now.", "已保存 {n} 项设置，立即生效。")
_add("config.saved.one", "Saved {n} setting; it applies now.", "已保存 {n} 项设置，立即生效。")
_add("config.reset_done", "Settings reset to defaults.", "已恢复默认设置。")
_add("config.invalid", "Not saved: fix the fields marked below.", "未保存：请修正下方标出的字段。")
_add("config.bad_json", "Not valid JSON: {msg}", "不是有效的 JSON：{msg}")
_add("config.secret_hint", "Masked; type new values (one per line) to replace them all.", "已掩码显示；输入新值（每行一个）将全部替换。")
_add("config.list_hint", "One per line.", "每行一个。")
# -- SQL -------------------------------------------------------------------------------------------------------
_add("sql.title", "SQL", "SQL 查询")
_add("sql.intro", "One read-only SELECT over the call events (DuckDB SQL). Time limit and row cap are set in Config.",
     "对调用事件执行一条只读 SELECT（DuckDB SQL）。时间限制与行数上限可在配置中设置。")
_add("sql.examples", "Example queries", "示例查询")
_add("sql.pick_example", "— pick an example —", "— 选择示例 —")
_add("sql.editor", "SQL", "SQL")
_add("sql.run", "Run", "运行")
_add("sql.schema", "Schema", "表结构")
_add("sql.rows", "{n} rows · {ms} ms", "{n} 行 · {ms} 毫秒")
_add("sql.rows.one", "{n} row · {ms} ms", "{n} 行 · {ms} 毫秒")
_add("sql.truncated", "The result was cut at the row cap.", "结果已按行数上限截断。")
_add("sql.ex.spend", "Spend by day, project, tier and model, last 30 days (USD, estimated)",
     "最近 30 天按日、项目、层级和模型的费用（美元，估算）")
_add("sql.ex.calls_by_model", "Calls and success rate by model, last 24 h", "最近 24 小时各模型调用数与成功率")
_add("sql.ex.hourly", "Hourly calls and p95 latency, last 2 days", "最近 2 天每小时调用数与 p95 延迟")
_add("sql.ex.keys_429", "Keys with the most 429s today", "今天 429 最多的密钥")
_add("sql.ex.quota_ids", "Which quota limits were hit (attempts)", "触发了哪些配额限制（尝试记录）")
_add("sql.ex.errors_by_type", "Error logs by type, last 7 days", "最近 7 天错误日志按类型统计")
_add("sql.ex.tokens_by_project", "Tokens per project per day", "各项目每日 Token 用量")
_add("sql.ex.slowest", "Slowest requests, last 24 h", "最近 24 小时最慢的请求")
# -- config fields (labels; the API's English description is the tooltip) -----------------------------------------
_add("field.access_tokens", "Client access tokens", "客户端访问令牌")
_add("field.display_timezone", "Display time zone", "显示时区")
_add("field.client_labels", "Client labels (client id → name)", "客户端名称（客户端 ID → 名称）")
_add("field.language", "Default dashboard language", "控制台默认语言")
_add("config.lang_default", "For browsers that have not chosen a language in the sidebar. This browser shows {lang}.",
     "适用于未在侧边栏选择语言的浏览器。此浏览器当前显示{lang}。")
_add("config.lang_own", "For browsers that have not chosen a language in the sidebar. This browser shows {lang}: its "
     "own choice in the sidebar.", "适用于未在侧边栏选择语言的浏览器。此浏览器显示{lang}：这是它在侧边栏中的选择。")
_add("field.max_body_mb", "Largest request body (MB)", "最大请求体（MB）")
_add("field.upstream_url", "Gemini API base URL", "Gemini API 地址")
_add("field.outbound_proxy", "Outbound HTTP(S) proxy", "出站 HTTP(S) 代理")
_add("field.strategy", "Key selection strategy", "密钥选择策略")
_add("field.max_retries", "Retries on another key", "换密钥重试次数")
_add("field.connect_timeout_s", "Connect timeout (s)", "连接超时（秒）")
_add("field.request_timeout_s", "Read timeout per attempt (s)", "单次读取超时（秒）")
_add("field.max_answer_mb", "Largest upstream answer, non-stream (MB)", "上游非流式响应上限（MB）")
_add("field.call_deadline_s", "Deadline per call, retries included (s)", "单次调用总时限，含重试（秒）")
_add("field.default_cooldown_s", "Cooldown after a bare 429 (s)", "无详情 429 后的冷却时间（秒）")
_add("field.failure_threshold", "Consecutive failures before disabling", "连续失败多少次后禁用")
_add("field.recheck_interval_s", "Re-check interval for failed keys (s)", "失效密钥复检间隔（秒）")
_add("field.model_limits", "Per-model limits (JSON)", "按模型限额（JSON）")
_add("field.prices", "Prices per model, USD per 1M tokens (JSON)", "按模型价格，每百万 Token 美元（JSON）")
_add("field.paid_daily_cap_usd", "Daily cap on paid spend, USD (JSON number; null: no cap)",
     "付费项目每日费用上限，美元（JSON 数字；null 表示不限）")
_add("field.fallbacks", "Fallback chains per model (JSON)", "按模型的回退链（JSON）")
_add("field.priority_reserve", "Quota reserve per client class, a share of a model's quota (JSON)",
     "按客户端类别保留的配额份额（JSON）")
_add("field.fallback_enabled", "Serve fallbacks when a model has no headroom", "模型无余量时使用回退模型")
_add("field.aliases", "Model aliases: client name → Gemini model (JSON)", "模型别名：客户端名称 → Gemini 模型（JSON）")
_add("field.project_tiers", "Billing tier per project: free or paid (JSON)", "按项目计费层级：免费或付费（JSON）")
_add("field.log_level", "Log level", "日志级别")
_add("field.log_request_bodies", "Record request bodies of failed calls", "记录失败调用的请求体")
_add("field.retention_requests_days", "Keep requests (days)", "请求记录保留（天）")
_add("field.retention_attempts_days", "Keep attempts (days)", "尝试记录保留（天）")
_add("field.retention_error_logs_days", "Keep error logs (days)", "错误日志保留（天）")
_add("field.snapshot_interval_s", "Parquet snapshot period (s, 0 = off)", "Parquet 快照周期（秒，0 为关闭）")
_add("field.query_timeout_s", "SQL page time limit (s)", "SQL 查询时间限制（秒）")
_add("field.explore_timeout_s", "Explore time limit (s)", "多维分析时间限制（秒）")
_add("field.query_row_cap", "SQL page row cap", "SQL 查询行数上限")
_add("field.query_byte_cap_mb", "SQL page result size cap (MB)", "SQL 查询结果大小上限（MB）")
# -- forecast ----------------------------------------------------------------------------------------------------
_add("nav.forecast", "Forecast", "预测")
_add("forecast.title", "Forecast", "预测")
_add("forecast.quota_title", "Today's quota: when does each model run out?", "今日配额：各模型何时耗尽？")
_add("forecast.no_traffic_today", "No calls yet in this quota day (Pacific time): nothing to project.", "本配额日（太平洋时间）还没有调用，无可预测。")
_add("forecast.quota_caption", "Per-day limits count the Pacific quota day. Red bars run out before the reset at Pacific midnight at the current rate (smoothed over ~30 min); green bars last until it.", "每日限额按太平洋时间的配额日计算。红色条表示按当前速率（约 30 分钟平滑）会在太平洋时间午夜重置前耗尽；绿色条可坚持到重置。")
_add("forecast.per_project", "Per project", "按项目")
_add("forecast.timeline_title", "Projected exhaustion per (project, model)", "各（项目，模型）预计耗尽时间")
_add("forecast.reset_line", "reset (00:00 Pacific)", "重置（太平洋时间 00:00）")
_add("forecast.runs_out_at", "runs out at {at}", "{at} 耗尽")
_add("forecast.lasts", "lasts until reset", "可坚持到重置")
_add("forecast.key_scope", "key {key}", "密钥 {key}")
_add("monitor.recent_calls", "Calls by the hour, yesterday and today", "每小时调用数（昨天和今天）")
_add("forecast.card_title", "Soonest quota exhaustion", "最早配额耗尽")
_add("forecast.card_none", "No model runs out today at the current rate", "按当前速率今天没有模型会耗尽")
_add("forecast.card_model", "{model} · {pt} Pacific", "{model} · 太平洋时间 {pt}")
_add("forecast.col_model", "Model", "模型")
_add("forecast.col_project", "Project", "项目")
_add("forecast.col_used", "Used today", "今日已用")
_add("forecast.col_limit", "Daily limit", "每日限额")
_add("forecast.col_source", "Limit from", "限额来源")
_add("forecast.col_rate", "Calls/min", "调用/分钟")
_add("forecast.col_exhausts", "Runs out (local)", "耗尽时间（本地）")
_add("forecast.col_exhausts_pt", "Runs out (Pacific)", "耗尽时间（太平洋）")
_add("forecast.col_rpm_headroom", "RPM headroom now", "当前每分钟余量")
_add("forecast.col_projects", "Projects", "项目数")
_add("forecast.col_refused", "Refused next hour", "未来一小时将被拒绝")
_add("forecast.source_configured", "configured", "配置")
_add("forecast.source_learned", "learned (429)", "从 429 学得")
_add("forecast.source_builtin", "built-in guess", "内置估计")
_add("forecast.source_none", "unknown", "未知")
_add("forecast.demand_title", "Demand ahead", "未来需求")
_add("forecast.model", "Model", "模型")
_add("forecast.all_models", "All models", "全部模型")
_add("forecast.horizon", "Horizon", "预测范围")
_add("forecast.horizon_hour", "Next 24 h by hour", "未来 24 小时（按小时）")
_add("forecast.horizon_day", "Next 14 days by day", "未来 14 天（按天）")
_add("forecast.demand_chart_hour", "Calls per hour · {model}", "每小时调用 · {model}")
_add("forecast.demand_chart_day", "Calls per day · {model}", "每日调用 · {model}")
_add("forecast.history", "Recorded", "实际记录")
_add("forecast.forecast", "Forecast", "预测")
_add("forecast.band", "90 % interval", "90% 区间")
_add("forecast.calls_axis", "Calls", "调用次数")
_add("forecast.backtest", "Backtest on the last {days} day(s) held out: MAPE {mape} %, {cov} % of actual values inside the 90 % band. Model: {method}.", "用最近 {days} 天留出数据回测：MAPE {mape}%，{cov}% 的实际值落在 90% 区间内。模型：{method}。")
_add("forecast.demo_note", "Demo data: the history before {until} was generated by the demo, not recorded.", "演示数据：{until} 之前的历史由演示生成，并非真实记录。")
_add("forecast.need_history", "Not enough history for a forecast: need ≥ {need} days of data, have {have}.", "历史数据不足，无法预测：需要至少 {need} 天，目前 {have} 天。")
_add("forecast.pending", "The first forecast is still being computed; refresh in a minute.", "首次预测仍在计算中，请稍后刷新。")
_add("forecast.pending_fitting", "No forecast yet: the first one is being fitted from the recorded hours (it starts a few seconds after the proxy and takes up to a minute). Refresh in a minute.", "暂无预测：正在根据已记录的每小时数据计算首次预测（代理启动几秒后开始，最多需要一分钟）。请一分钟后刷新。")
_add("forecast.pending_rollup", "No forecast yet: the hourly history it is fitted on is being rebuilt{done}; the first forecast follows right after. Refresh in a minute.", "暂无预测：用于预测的每小时历史数据正在重建{done}，重建完成后立即计算首次预测。请一分钟后刷新。")
_add("forecast.pending_done", " ({pct} % done)", "（已完成 {pct}%）")
_add("forecast.pending_failed", "No forecast yet: the last attempt failed ({error}). It is tried again every {minutes} minutes; the proxy's log has the details.", "暂无预测：上次计算失败（{error}）。每 {minutes} 分钟重试一次，详情见代理日志。")
_add("forecast.plan_title", "Capacity planner", "容量规划")
_add("forecast.plan_intro", "Leave targets empty to use the forecast's peak. Keys in one project share its quota: capacity comes from projects.", "目标留空则使用预测峰值。同一项目的密钥共享配额：容量取决于项目数量。")
_add("forecast.target_rpm", "Target calls/min", "目标每分钟调用")
_add("forecast.target_rpd", "Target calls/day", "目标每日调用")
_add("forecast.remove_projects", "What if these projects are removed", "假如移除这些项目")
_add("forecast.whatif_rpm", "What if the per-minute limit were", "假如每分钟限额为")
_add("forecast.whatif_rpd", "What if the per-day limit were", "假如每日限额为")
_add("forecast.plan_submit", "Plan", "规划")
_add("forecast.projects_needed", "Projects needed", "所需项目数")
_add("forecast.keys_needed", "Keys needed (one per project)", "所需密钥数（每项目一个）")
_add("forecast.projects_to_add", "Projects to add", "需新增项目")
_add("forecast.col_dim", "Limit", "限额")
_add("forecast.col_target", "Target", "目标")
_add("forecast.col_cap_before", "Capacity now", "当前容量")
_add("forecast.col_cap_after", "Capacity after", "变更后容量")
_add("forecast.col_room_before", "Headroom now", "当前余量")
_add("forecast.col_room_after", "Headroom after", "变更后余量")
# Explore
_add("explore.title", "Explore", "多维分析")
_add("explore.measure", "Measure", "指标")
_add("explore.rows", "Rows", "行")
_add("explore.cols", "Columns", "列")
_add("explore.no_cols", "(none)", "（无）")
_add("explore.view", "View", "视图")
_add("explore.view_pivot", "Pivot", "透视表")
_add("explore.view_heatmap", "Heatmap", "热力图")
_add("explore.view_multiples", "Small multiples", "小多图")
_add("explore.view_share", "Share", "占比")
_add("explore.top_n", "Top N values", "前 N 个值")
_add("explore.compare", "Compare with previous period", "与上一周期对比")
_add("explore.filters_n", "Filters ({n})", "筛选（{n}）")
_add("explore.filter_dim", "Filter on", "筛选维度")
_add("explore.filter_values", "Values", "取值")
_add("explore.clear_filters", "Clear all filters", "清除全部筛选")
_add("explore.no_data", "No calls match this view.", "没有符合此视图的调用。")
_add("explore.need_cols", "A heatmap needs a column dimension: pick one under Columns.", "热力图需要列维度：请在“列”中选择。")
_add("explore.need_time", "Small multiples need a time dimension (hour, day, week or month) as rows or columns.",
     "小多图需要时间维度（小时、天、周或月）作为行或列。")
_add("explore.delta_title", "Change vs the previous period", "与上一周期相比的变化")
_add("explore.drill_hint", "Click a cell to see the calls behind it.", "点击单元格查看其背后的调用。")
_add("explore.other_cell", "“(other)” gathers many values: pick a named one to drill down.",
     "“（其他）”汇总了多个取值：请选择具体取值下钻。")
_add("explore.drill_title", "Calls: {what}", "调用：{what}")
_add("explore.drill_count", "{n} calls (newest first, at most 200). Select one with an error id to see its log entry.",
     "{n} 次调用（最新在前，最多 200 条）。选择带错误 ID 的一行可查看其错误日志。")
_add("explore.error_entry", "Error log entry {id}", "错误日志 {id}")
_add("explore.open_sql", "Open in SQL", "在 SQL 页打开")
_add("explore.sql_text", "The same selection as SQL", "同一筛选的 SQL")
_add("explore.rebuilding", "The pre-aggregates are being rebuilt ({pct} % done): this answer is exact, read from the "
     "raw calls, and may take longer until the rebuild ends.", "预聚合数据正在重建（已完成 {pct} %）：此结果精确，直接读取原始调用，"
     "重建完成前可能较慢。")
_add("stats.rebuilding", "The pre-aggregates are being rebuilt ({pct} % done): these figures are exact, read from "
     "the raw calls, and may take longer until the rebuild ends.", "预聚合数据正在重建（已完成 {pct} %）：这些数字精确，"
     "直接读取原始调用，重建完成前可能较慢。")
_add("explore.footer", "Source: {source} · time zone {tz} · the page address reproduces this view",
     "数据来源：{source} · 时区 {tz} · 页面地址可复现此视图")
_add("dim.client", "Client", "客户端")
_add("dim.surface", "Surface", "接口")
_add("dim.operation", "Operation", "操作")
_add("dim.stream", "Stream", "流式")
_add("dim.outcome", "Outcome", "结果")
_add("dim.resource", "Resource", "资源")
_add("dim.tier", "Tier", "计费层级")
_add("tier.free", "free", "免费")
_add("tier.paid", "paid", "付费")
# The kinds of Gemini resource a call works on (requests.resource_kind); calls naming none have no value ("∅").
_add("resource.file", "file", "文件")
_add("resource.cachedContent", "cached content", "缓存内容")
_add("resource.batch", "batch", "批处理")
_add("resource.operation", "operation", "长时操作")
_add("resource.live", "Live session", "Live 会话")
_add("dim.hour_of_day", "Hour of day", "一天中的小时")
_add("dim.day_of_week", "Day of week (1 = Mon)", "星期（1 = 周一）")
_add("dim.hour", "Hour", "小时")
_add("dim.day", "Day", "天")
_add("dim.week", "Week", "周")
_add("dim.month", "Month", "月")
_add("m.calls", "Calls", "调用数")
_add("m.successes", "Successes", "成功数")
_add("m.success_rate", "Success rate", "成功率")
_add("m.error_rate", "Error rate", "错误率")
_add("m.exhausted", "Keyrack 429s (no key usable)", "Keyrack 429（无可用密钥）")
_add("m.attempts_per_call", "Upstream attempts per call", "每次调用的上游尝试数")
_add("m.upstream_429s", "Upstream 429s", "上游 429 次数")
_add("m.p50_latency_ms", "p50 latency (ms)", "p50 延迟（毫秒）")
_add("m.p95_latency_ms", "p95 latency (ms)", "p95 延迟（毫秒）")
_add("m.p99_latency_ms", "p99 latency (ms)", "p99 延迟（毫秒）")
_add("m.p95_ttfb_ms", "p95 time to first byte (ms)", "p95 首字节时间（毫秒）")
_add("m.prompt_tokens", "Prompt tokens", "输入 Token")
_add("m.output_tokens", "Output tokens", "输出 Token")
_add("m.thinking_tokens", "Thinking tokens", "思考 Token")
_add("m.cached_tokens", "Cached tokens", "缓存 Token")
_add("m.total_tokens", "Total tokens", "总 Token")
_add("m.tokens_per_call", "Tokens per call", "每次调用 Token")
_add("m.request_bytes", "Request bytes", "请求字节数")
_add("m.response_bytes", "Response bytes", "响应字节数")
_add("m.cost_usd", "Spend (USD, estimated)", "费用（美元，估算）")
_add("m.list_cost_usd", "Spend at list price (USD)", "按标价计费用（美元）")
_add("col.client", "Client", "客户端")
_add("col.key_id", "Key", "密钥")
_add("col.error_id", "Error log id", "错误日志 ID")
_add("col.resource_kind", "Resource", "资源")
_add("col.request_bytes", "Request bytes", "请求字节数")
_add("col.response_bytes", "Response bytes", "响应字节数")
_add("col.resource_id", "Resource name", "资源名称")
_add("col.client_id", "Client id", "客户端 ID")
_add("col.token", "Token (masked)", "令牌（已遮盖）")
_add("col.calls_90d", "Calls (90 days)", "调用数（90 天）")
_add("config.clients_title", "Client labels", "客户端名称")
_add("config.clients_intro", "Name each client (access token) so that Explore, Trends and the SQL page's requests.client "
     "show “billing-service” instead of an id. Tokens stay masked.",
     "为每个客户端（访问令牌）命名，多维分析、趋势和 SQL 页的 requests.client 将显示名称而不是 ID。令牌始终遮盖显示。")
_add("config.clients_save", "Save labels", "保存名称")
_add("config.clients_saved", "Client labels saved.", "客户端名称已保存。")
_add("config.clients_none", "No clients yet: configure access tokens or send some calls.", "暂无客户端：请配置访问令牌或发送调用。")
# -- clients (tenants) ---------------------------------------------------------------------------------------------
_add("nav.clients", "Clients", "客户端")
_add("clients.title", "Clients", "客户端")
_add("clients.none", "No client records yet: create one below.", "暂无客户端记录：请在下方创建。")
_add(
    "clients.token_once",
    "The token of '{label}': copy it now, it is shown only this once.",
    "'{label}' 的令牌：请立即复制，它只显示这一次。",
)
_add("clients.near_limit", "'{label}' has used {share} of its {limit} limit.", "'{label}' 已用去其 {limit} 限额的 {share}。")
_add("clients.create", "New client", "新建客户端")
_add("clients.create_button", "Create client", "创建客户端")
_add("clients.created", "Client '{label}' created.", "已创建客户端 '{label}'。")
_add("clients.label_required", "A label is required.", "必须填写名称。")
_add("clients.limits_note", "A limit of 0 here means no limit.", "此处限额为 0 表示不限。")
_add("clients.manage", "Rotate or revoke", "轮换或吊销")
_add("clients.rotate", "Rotate token", "轮换令牌")
_add("clients.rotated", "New token for {label}.", "已为 {label} 生成新令牌。")
_add("clients.revoke", "Revoke", "吊销")
_add("clients.revoked", "{label} revoked: its token is refused from now on.", "已吊销 {label}：其令牌从现在起被拒绝。")
_add("clients.confirm_revoke", "Yes, revoke this client", "确认吊销此客户端")
_add("clients.f.label", "Label", "名称")
_add("clients.f.class", "Class", "优先级类别")
_add("clients.f.owner", "Owner", "负责人")
_add("clients.f.models", "Models allowed (blank: every model)", "允许的模型（留空：全部）")
_add("clients.f.expires", "Expires on (UTC)", "到期日（UTC）")
_add("clients.f.client", "Client", "客户端")
_add("clients.f.grace", "Old token stays valid for (s)", "旧令牌保留有效（秒）")
_add("clients.class.interactive", "interactive", "交互")
_add("clients.class.standard", "standard", "标准")
_add("clients.class.batch", "batch", "批量")
_add("clients.limit.rpm", "Calls / min", "调用 / 分钟")
_add("clients.limit.rpd", "Calls / day", "调用 / 天")
_add("clients.limit.tpd", "Tokens / day", "Token / 天")
_add("clients.limit.calls_per_month", "Calls / month", "调用 / 月")
_add("clients.limit.tokens_per_month", "Tokens / month", "Token / 月")
_add("clients.limit.concurrency", "At once", "并发")
_add("clients.col.id", "Id", "ID")
_add("clients.col.label", "Label", "名称")
_add("clients.col.owner", "Owner", "负责人")
_add("clients.col.class", "Class", "类别")
_add("clients.col.status", "Status", "状态")
_add("clients.col.rpm", "Calls / min", "调用 / 分钟")
_add("clients.col.rpd", "Calls today", "今日调用")
_add("clients.col.tpd", "Tokens today", "今日 Token")
_add("clients.col.calls_per_month", "Calls this month", "本月调用")
_add("clients.col.tokens_per_month", "Tokens this month", "本月 Token")
_add("clients.col.concurrency", "In flight", "进行中")
_add("clients.monitor_title", "Clients now", "客户端实时")
_add("clients.monitor_none", "No client has made a call today.", "今天还没有客户端发起调用。")
_add("clients.col.limit_at", "Limit reached at (UTC, at this pace)", "按当前速度达到限额（UTC）")
_add("clients.col.models", "Models", "模型")
_add("clients.col.last_used_at", "Last used", "最近使用")
_add("clients.col.expires_at", "Expires", "到期")
# -- alerts ------------------------------------------------------------------------------------------------------
_add("nav.alerts", "Alerts", "告警")
_add("alerts.title", "Alerts", "告警")
_add("alerts.badge", "{n} firing", "{n} 条告警中")
_add("alerts.firing_now", "Firing now ({n})", "正在告警（{n}）")
_add("alerts.all_clear", "Nothing is firing.", "当前没有告警。")
_add("alerts.state.firing", WORDS["en"]["firing"], WORDS["zh"]["firing"])
_add("alerts.state.pending", WORDS["en"]["pending"], WORDS["zh"]["pending"])
_add("alerts.state.inactive", "ok", "正常")
_add("alerts.sev.info", "info", "提示")
_add("alerts.sev.warning", "warning", "警告")
_add("alerts.sev.critical", "critical", "严重")
_add("alerts.kind.fired", "fired", "触发")
_add("alerts.kind.repeat", "repeated", "重复通知")
_add("alerts.kind.resolved", WORDS["en"]["resolved"], WORDS["zh"]["resolved"])
_add("alerts.kind.delivered", "delivered", "已送达")
_add("alerts.kind.failed", "delivery failed", "发送失败")
_add("alerts.col.since", WORDS["en"]["since"].capitalize(), WORDS["zh"]["since"])
_add("alerts.col.until", "Until", "截止")
_add("alerts.col.time", "Time", "时间")
_add("alerts.col.enabled", "Enabled", "启用")
_add("alerts.open", "open", "打开")
_add("alerts.tab.rules", "Rules", "规则")
_add("alerts.tab.channels", "Channels", "通知渠道")
_add("alerts.tab.silences", "Silences", "静默")
_add("alerts.tab.history", "History", "历史")
_add("alerts.enabled", "Rule “{name}” enabled.", "规则“{name}”已启用。")
_add("alerts.disabled", "Rule “{name}” disabled.", "规则“{name}”已停用。")
_add("alerts.edit", "Edit a rule", "编辑规则")
_add("alerts.new_rule", "New rule…", "新建规则…")
_add("alerts.none", "none", "无")
_add("alerts.any_rule", "any rule", "任意规则")
_add("alerts.f.name", "Name", "名称")
_add("alerts.f.metric", "Metric", "指标")
_add("alerts.f.severity", "Severity", "级别")
_add("alerts.f.op", "Comparison", "比较")
_add("alerts.f.threshold", "Threshold (rates as 0–1)", "阈值（比率用 0–1）")
_add("alerts.f.window_s", "Window (s)", "时间窗口（秒）")
_add("alerts.f.for_s", "For (s)", "持续（秒）")
_add("alerts.f.repeat_s", "Repeat every (s, 0 = never)", "重复通知间隔（秒，0 为不重复）")
_add("alerts.f.group_by", "One alert per", "按维度分别告警")
_add("alerts.f.model", "Model filter", "模型筛选")
_add("alerts.f.project", "Project filter", "项目筛选")
_add("alerts.f.channels", "Notify channels", "通知渠道")
_add("alerts.f.url", "Apprise URL (secret)", "Apprise 地址（机密）")
_add("alerts.f.rule", "Rule", "规则")
_add("alerts.f.hours", "For how many hours", "静默小时数")
_add("alerts.f.comment", "Comment", "备注")
_add("alerts.backtest", "Backtest 7 days", "回测 7 天")
_add("alerts.backtest_title", "Last 7 days: would have fired {n} time(s)", "最近 7 天：将触发 {n} 次")
_add("alerts.backtest_caption", "Would have fired {n} time(s), {h} h in total (15-minute resolution, red bands).",
     "将触发 {n} 次，共 {h} 小时（15 分钟粒度，红色区域）。")
_add("alerts.backtest_unsupported", "No backtest for this rule: {why}", "此规则无法回测：{why}")
_add("alerts.threshold", WORDS["en"]["threshold"], WORDS["zh"]["threshold"])
_add("alerts.timeline", "Alert history", "告警历史")
_add("alerts.save", "Save rule", "保存规则")
_add("alerts.delete", "Delete", "删除")
_add("alerts.saved", "Rule “{name}” saved.", "规则“{name}”已保存。")
_add("alerts.deleted", "Rule “{name}” deleted.", "规则“{name}”已删除。")
_add("alerts.channel", "Channel", "渠道")
_add("alerts.send_test", "Send test", "发送测试")
_add("alerts.test_result", "Test: {msg}", "测试：{msg}")
_add("alerts.channel_help", "Any Apprise URL: json://, mailto://, slack://, discord://, tgram://, dingtalk://, "
     "wecombot://, feishu://… or webhook+https://host/path for Keyrack's signed webhook.",
     "任意 Apprise 地址：json://、mailto://、slack://、discord://、tgram://、dingtalk://、wecombot://、feishu://… "
     "或 webhook+https://主机/路径（Keyrack 签名 Webhook）。")
_add("alerts.add_channel", "Add channel", "添加渠道")
_add("alerts.channel_added", "Channel added.", "渠道已添加。")
_add("alerts.channel_deleted", "Channel deleted.", "渠道已删除。")
_add("alerts.silence", "Silence", "静默")
_add("alerts.add_silence", "Silence rule", "静默规则")
_add("alerts.silence_added", "Silence added.", "静默已添加。")
_add("alerts.silence_deleted", "Silence deleted.", "静默已删除。")
_add("config.section.alerts", "Alerts", "告警")
_add("field.alert_interval_s", "Alert evaluation interval (s)", "告警评估间隔（秒）")
_add("field.retention_alert_history_days", "Keep alert history (days)", "告警历史保留（天）")
_add("field.dashboard_url", "Dashboard address for alert links", "告警消息中的控制台地址")
# -- alerts: tables, metrics, the shipped rules' names, history notes ---------------------------------------------
_add("alerts.col.state", "State", "状态")
_add("alerts.col.severity", "Severity", "级别")
_add("alerts.col.rule", "Rule", "规则")
_add("alerts.col.value", WORDS["en"]["value"].capitalize(), WORDS["zh"]["value"])
_add("alerts.col.labels", WORDS["en"]["labels"].capitalize(), WORDS["zh"]["labels"])
_add("alerts.col.silenced", "Silenced", "已静默")
_add("alerts.col.errors", "Error logs", "错误日志")
_add("alerts.col.trends", "Trends", "趋势")
_add("alerts.col.name", "Name", "名称")
_add("alerts.col.condition", "Condition", "条件")
_add("alerts.col.window", "Window", "时间窗口")
_add("alerts.col.for", "For", "持续")
_add("alerts.col.channels", "Channels", "通知渠道")
_add("alerts.col.kind", "Kind", "类型")
_add("alerts.col.url", "Address (masked)", "地址（已遮盖）")
_add("alerts.col.active", "Active", "生效中")
_add("alerts.col.comment", "Comment", "备注")
_add("alerts.col.ts", "Time", "时间")
_add("alerts.col.event", "Event", "事件")
_add("alerts.col.channel", "Channel", "渠道")
_add("alerts.col.attempt", "Attempt", "尝试次数")
_add("alerts.col.message", "Message", "消息")
_add("alerts.col.id", "Id", "ID")
_add("alerts.why.live", "{metric} has no recorded history (it is read live)", "{metric}没有历史记录（它是实时读取的）")
_add("alerts.why.one_filter", "backtests can filter by one model or one project only", "回测只能按一个模型或一个项目筛选")
_add("alerts.why.no_split", "the Keyrack 429 history has no model or project split", "Keyrack 429 的历史没有按模型或项目拆分")
_add("alerts.seconds", "{n} s", "{n} 秒")
_add("alerts.unit.count", "count", "次数")
_add("alerts.unit.usd", "USD", "美元")
_add("alerts.unit.x", "×", "倍")
_add("alerts.unit.ms", "ms", "毫秒")
_add("alerts.unit.pct", "%", "%")
_add("alerts.unit.min", "min", "分钟")
_add("alerts.msg.silenced", "silenced: not sent", "已静默：未发送")
_add("alerts.msg.retry", "will retry: {why}", "将重试：{why}")
_add("alerts.msg.gave_up", "gave up after {n} attempts: {why}", "尝试 {n} 次后放弃：{why}")
_add("alerts.msg.queue_full", "this channel's queue is full; not sent", "该渠道队列已满，未发送")
_add("alerts.msg.capped", "{n} notification(s) not sent: over this channel's cap of {cap} a minute",
     "{n} 条通知未发送：超过该渠道每分钟 {cap} 条的上限")
_add("alerts.metric.success_rate", "success rate", "成功率")
_add("alerts.metric.error_rate", "error rate", "错误率")
_add("alerts.metric.upstream_error_rate", "upstream error rate", "上游错误率")
_add("alerts.metric.exhausted_rate", "Keyrack 429 rate (no key usable)", "Keyrack 429 比例（无可用密钥）")
_add("alerts.metric.stream_error_rate", "broken stream rate", "流中断比例")
_add("alerts.metric.client_error_rate", "client error rate", "客户端错误率")
_add("alerts.metric.upstream_429_rate", "upstream 429 rate", "上游 429 比例")
_add("alerts.metric.attempts_per_call", "upstream attempts per call", "每次调用的上游尝试数")
_add("alerts.metric.p95_latency_ms", "p95 latency", "p95 延迟")
_add("alerts.metric.p95_ttft_ms", "p95 time to first byte", "p95 首字节时间")
_add("alerts.metric.calls", "calls", "调用数")
_add("alerts.metric.spend_usd", "spend (USD)", "费用（美元）")
_add("alerts.metric.calls_vs_last_week", "calls vs the same window last week", "调用数与上周同期之比")
_add("alerts.metric.active_keys", "usable keys", "可用密钥数")
_add("alerts.metric.cooling_keys", "cooling keys", "冷却中密钥数")
_add("alerts.metric.invalid_keys", "invalid keys", "无效密钥数")
_add("alerts.metric.disabled_keys", "disabled keys", "已禁用密钥数")
_add("alerts.metric.usable_capacity_pct", "usable capacity vs demand (%)", "可用容量占需求比例（%）")
_add("alerts.metric.quota_day_usage_pct", "daily quota used (%)", "每日配额已用（%）")
_add("alerts.metric.exhaustion_before_reset_min", "minutes the daily quota runs out before the reset",
     "每日配额在重置前提前耗尽的分钟数")
_add("alerts.metric.key_flaps", "key flaps (invalid ↔ active)", "密钥状态反复（无效 ↔ 可用）")
_add("alerts.metric.client_limit_use_pct", "client's limit used (%)", "客户端限额已用（%）")
# The shipped rules, under the English names the proxy gives them (a renamed rule keeps its operator's name).
_add("alerts.rule.default-invalid-keys", "Invalid keys", "存在无效密钥")
_add("alerts.rule.default-no-active-keys", "No usable keys", "没有可用密钥")
_add("alerts.rule.default-success-rate", "Success rate below 90 %", "成功率低于 90%")
_add("alerts.rule.default-exhausted", "Keyrack refusing calls (own 429)", "Keyrack 拒绝调用（自身 429）")
_add("alerts.rule.default-upstream-429", "Upstream 429 storm", "上游 429 激增")
_add("alerts.rule.default-p95-latency", "p95 latency above 30 s", "p95 延迟高于 30 秒")
_add("alerts.rule.default-traffic-drop", "Traffic dropped vs last week", "流量较上周下降")
_add("alerts.rule.default-quota-day", "Daily quota 90 % used", "每日配额已用 90%")
_add("alerts.rule.default-key-flaps", "Key flapping", "密钥状态反复")
# -- error types (error_logs.error_type) and the rest of the outcomes ------------------------------------------------
_add("outcome.stream_error", "broken stream", "流中断")
_add("errtype.rate_limited", "rate limited (429)", "限流（429）")
_add("errtype.invalid_key", "invalid key", "无效密钥")
_add("errtype.client_refused", "refused by the client's own limits", "因客户端自身限制被拒绝")
_add("errtype.server_error", "upstream server error", "上游服务器错误")
_add("errtype.timeout", "timeout", "超时")
_add("errtype.connection_error", "connection error", "连接错误")
_add("errtype.admin_error", "admin API error", "管理 API 错误")
_add("errtype.client_error", "client error", "客户端错误")
_add("errtype.stream_error", "broken stream", "流中断")
_add("errtype.too_large", "answer too large", "响应过大")
_add("errtype.answer_too_large", "answer too large", "响应过大")
_add("errtype.exhausted", "refused (no key free)", "拒绝（无可用密钥）")
_add("errtype.proxy_error", "proxy error", "代理错误")
_add("errtype.upstream_error", "upstream error", "上游错误")
_add("errtype.upstream_unreachable", "upstream unreachable", "无法连接上游")
_add("errtype.unauthorized", "unauthorised", "未授权")
_add("errtype.forbidden", "forbidden", "禁止访问")
_add("errtype.bad_request", "bad request", "请求无效")
_add("errtype.not_found", "not found", "未找到")
_add("errtype.method_not_allowed", "method not allowed", "方法不允许")
_add("errtype.payload_too_large", "request too large", "请求过大")
_add("errtype.unsupported_media_type", "unsupported media type", "不支持的媒体类型")
_add("errtype.audit", "audit", "审计")
# -- placeholders, the rest of Forecast and Explore -------------------------------------------------------------------
_add("common.choose_options", "Choose options", "请选择")
_add("common.no_options", "No options to select", "没有可选项")
_add("forecast.note.zero_limit", "{model} has a limit of 0 in this pool: no number of projects serves it (no quota "
     "on this tier)", "{model} 在此号池中的限额为 0：增加多少项目都无法满足（该层级没有配额）")
_add("forecast.note.shared_keys", "project {project} has {n} keys sharing one quota: {extra} of them add no capacity",
     "项目 {project} 有 {n} 个密钥共享同一配额：其中 {extra} 个不增加容量")
_add("forecast.note.no_project", "{n} key(s) have no project set; each is counted as its own project — if some share "
     "a project, the real capacity is lower", "{n} 个密钥未设置项目，每个按独立项目计算；如果其中一些属于同一项目，实际容量更低")
_add("forecast.note.no_rpd", "no per-day limit is known for this model: the per-day target needs no extra project as "
     "far as the pool knows (a 429 teaches the real limit)", "此模型没有已知的每日限额：就号池所知，每日目标无需额外项目（429 会告知真实限额）")
_add("forecast.note.peak_rpm", "target rpm = the forecast's busiest hour / 60: bursts inside a minute can go higher",
     "目标每分钟调用 = 预测最忙一小时 / 60：一分钟内的突发可能更高")
_add("forecast.no_limit", "no known limit", "无已知限额")
_add("forecast.per_min", "{n}/min", "{n} 次/分钟")
_add("explore.prev", "Previous period", "上一周期")
_add("explore.other", "(other)", "（其他）")
_add("explore.source.cube", "pre-aggregates", "预聚合数据")
_add("explore.source.raw", "raw calls", "原始调用")
_add("explore.source.mixed", "pre-aggregates and raw calls", "预聚合数据与原始调用")
# fmt: on
