"""Translations: every label, message and chart title on screen goes through `t("key")`.

English is the reference; Simplified Chinese must define the same keys (a test checks both ways and checks that
every `t("...")` literal in the dashboard exists). Placeholders use str.format: t("keys.added", n=3).
"""

from __future__ import annotations

from typing import Any

LANGUAGES = {"en": "English", "zh": "简体中文"}
DEFAULT = "en"

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


def t(key: str, /, **kw: Any) -> str:
    """The text for `key` in the session's language (falls back to English, then to the key itself).

    Keyword arguments fill the placeholders; `_lang="zh"` picks a language explicitly.
    """
    table = STRINGS.get(kw.pop("_lang", None) or current(), STRINGS[DEFAULT])
    text = table.get(key) or STRINGS[DEFAULT].get(key) or key
    if kw:
        try:
            return text.format(**kw)
        except (KeyError, IndexError, ValueError):
            return text
    return text


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
_add("chrome.language", "Language", "语言")
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
_add("login.url", "Proxy admin URL", "代理管理地址")
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
# -- common ----------------------------------------------------------------------------------------------------
_add("common.close", "Close", "关闭")
_add("common.cancel", "Cancel", "取消")
_add("common.confirm", "Confirm", "确认")
_add("common.confirm_title", "Please confirm", "请确认")
_add("common.all", "All", "全部")
_add("common.page", "Page", "页码")
_add("common.page_size", "Rows per page", "每页行数")
_add("common.page_of", "Page {page} of {pages} · {total} rows", "第 {page} / {pages} 页 · 共 {total} 行")
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
_add("chart.tokens_by", "Tokens by {dim}", "按{dim}的 Token 用量")
_add("chart.success", "Success", "成功")
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
_add("errors.confirm_selected", "Delete {n} selected error log entries?", "删除所选的 {n} 条错误日志？")
_add("errors.confirm_matching", "Delete all {n} entries matching the current filter?", "删除当前筛选匹配的全部 {n} 条错误日志？")
_add("errors.confirm_older", "Delete every entry older than {date}?", "删除 {date} 之前的全部错误日志？")
_add("errors.deleted", "Deleted {n} entries.", "已删除 {n} 条。")
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
_add("config.section.other", "Other", "其他")
_add("config.save", "Save", "保存")
_add("config.discard", "Discard changes", "放弃修改")
_add("config.reset", "Reset to defaults", "恢复默认")
_add("config.confirm_reset", "Reset every setting to its default (environment / .env) value?", "将所有设置恢复为默认值（环境变量 / .env）？")
_add("config.unsaved", "{n} unsaved changes", "{n} 项未保存的修改")
_add("config.no_changes", "No unsaved changes.", "没有未保存的修改。")
_add("config.changed", "● changed (saved value: {old})", "● 已修改（已保存的值：{old}）")
_add("config.saved", "Saved {n} settings; they apply now.", "已保存 {n} 项设置，立即生效。")
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
_add("sql.truncated", "The result was cut at the row cap.", "结果已按行数上限截断。")
_add("sql.empty", "Write a query first.", "请先输入查询。")
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
_add("field.language", "Dashboard language", "控制台语言")
_add("field.max_body_mb", "Largest request body (MB)", "最大请求体（MB）")
_add("field.upstream_url", "Gemini API base URL", "Gemini API 地址")
_add("field.outbound_proxy", "Outbound HTTP(S) proxy", "出站 HTTP(S) 代理")
_add("field.strategy", "Key selection strategy", "密钥选择策略")
_add("field.max_retries", "Retries on another key", "换密钥重试次数")
_add("field.connect_timeout_s", "Connect timeout (s)", "连接超时（秒）")
_add("field.request_timeout_s", "Read timeout per attempt (s)", "单次读取超时（秒）")
_add("field.default_cooldown_s", "Cooldown after a bare 429 (s)", "无详情 429 后的冷却时间（秒）")
_add("field.failure_threshold", "Consecutive failures before disabling", "连续失败多少次后禁用")
_add("field.recheck_interval_s", "Re-check interval for failed keys (s)", "失效密钥复检间隔（秒）")
_add("field.model_limits", "Per-model limits (JSON)", "按模型限额（JSON）")
_add("field.log_level", "Log level", "日志级别")
_add("field.log_request_bodies", "Record request bodies of failed calls", "记录失败调用的请求体")
_add("field.retention_requests_days", "Keep requests (days)", "请求记录保留（天）")
_add("field.retention_attempts_days", "Keep attempts (days)", "尝试记录保留（天）")
_add("field.retention_error_logs_days", "Keep error logs (days)", "错误日志保留（天）")
_add("field.snapshot_interval_s", "Parquet snapshot period (s, 0 = off)", "Parquet 快照周期（秒，0 为关闭）")
_add("field.query_timeout_s", "SQL page time limit (s)", "SQL 查询时间限制（秒）")
_add("field.query_row_cap", "SQL page row cap", "SQL 查询行数上限")
# fmt: on
