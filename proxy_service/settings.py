"""Configuration.

Precedence: built-in defaults → environment / `.env` (prefix `KEYRACK_`) → the config saved in DuckDB by the
admin API. Env seeds a fresh install; once an operator saves a value in the dashboard, the saved value wins
(until `POST /admin/api/config/reset`). `Settings` adds what only makes sense at startup (where to bind, the
data directory, the initial upstream keys, the admin token).
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from proxy_service.envfile import ENV_FILE
from proxy_service.keys import mask, parse_key_list, valid_project
from proxy_service.prices import MAX_MODELS, Price, default_prices

Strategy = Literal["quota_aware", "round_robin", "least_used"]
Tier = Literal["free", "paid"]
# How a secret setting is hidden: "value" masks the whole value (each item of a list), "url" only the password of
# a URL (http://user:pass@host → http://user:***@host). Declared once per field, below; config answers, log lines,
# the redaction of outside text and the dashboard's form all read it from here.
SecretKind = Literal["value", "url"]
GOOGLE_URL = "https://generativelanguage.googleapis.com"
# Model ids as Google spells them (gemini-2.5-flash, after any "models/" prefix); nothing that could climb a path.
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
# The block sizes DuckDB can make a database file with, and Keyrack's (why: store.Store). An existing file keeps the
# size it was made with.
BLOCK_SIZES = (16_384, 32_768, 65_536, 131_072, 262_144)
DUCKDB_BLOCK_SIZE = 65_536
# Rows per row group of the database file (DuckDB: 122,880), for every file opened (why: store.Store). DuckDB takes
# multiples of its vector size (2,048) up to 122,880.
DUCKDB_ROW_GROUP_SIZE = 16_384
MAX_CHAIN = 5  # models in one fallback chain: each step is another pass over the pool
_JSON_EXAMPLES = {
    "model_limits": '{"gemini-2.5-pro": {"rpm": 5, "rpd": 100}}',
    "prices": '{"gemini-2.5-flash": {"input_per_mtok": 0.3, "output_per_mtok": 2.5}}',
    "project_tiers": '{"acme-prod": "paid"}',
    "fallbacks": '{"gemini-2.5-pro": ["gemini-2.5-flash"]}',
    "aliases": '{"gpt-4o-mini": "gemini-2.5-flash"}',
}
CLIENT_ID = re.compile(r"t_[0-9a-f]{10}|anonymous")  # what surfaces.common.client_id makes of a token


def _meta(section: str, description: str, secret: SecretKind | None = None) -> dict[str, Any]:
    return {"section": section, "description": description, "secret": secret}


def is_model_name(name: str | None) -> bool:
    """A known-shape model id (≤ 128 characters): the only model names that reach metric labels and analytics."""
    return name is not None and MODEL_NAME_RE.match(name) is not None and ".." not in name


CONNINFO_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
# Query parameters that carry credentials (?token=, ?key=, ?password=, ?sig=, ?X-Amz-Credential=, ...).
_SECRET_QUERY_NAME = re.compile(r"pass|pwd|secret|token|key|auth|sig|cred|session", re.IGNORECASE)
# Database URLs name a role in their user part (postgresql://keyrack@db): a user without a password is a name there,
# not a token as in a webhook's https://TOKEN@host. Masking it would also redact that word from every log line.
_USER_IS_A_NAME = frozenset({"postgres", "postgresql", "redis", "rediss", "unix"})


def mask_url(url: str) -> str:
    """A URL (or libpq keyword string) with its credentials replaced by ***: the password, a user that has no
    password (then the user is the token: http://TOKEN@host), and query values named like credentials; host, port,
    path and a user with a password (or in a database URL) kept. The one masking rule for every URL-shaped setting (outbound proxy,
    cluster DSNs)."""
    if "://" not in url:
        return CONNINFO_PASSWORD.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, password = userinfo.partition(":")
        token = user and not password and parts.scheme.lower() not in _USER_IS_A_NAME
        shown = "***" if token else f"{user}{':***' if sep else ''}"
        netloc = f"{shown}{sep if shown == '***' else ''}@{hostport}"
    query = parts.query
    if query:
        query = "&".join(
            f"{k}={'***' if _SECRET_QUERY_NAME.search(k) else v}" for k, v in parse_qsl(query, keep_blank_values=True)
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The credentials `mask_url` hides in `url`, for the redaction of outside text (an error quoting the URL)."""
    try:
        parts = urlsplit(url)
        password, user = parts.password, parts.username
    except ValueError:
        return []
    token = user if user and parts.scheme.lower() not in _USER_IS_A_NAME else None
    out = [unquote(password)] if password else [unquote(token)] if token else []
    out += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if v and _SECRET_QUERY_NAME.search(k)]
    return out


def _secret_kind(info: Any) -> SecretKind | None:
    extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
    kind = extra.get("secret")
    return kind if kind in ("value", "url") else None


def _split_tokens(value: Any) -> Any:
    if isinstance(value, str):
        return [t for t in re.split(r"[\s,]+", value.strip()) if t]
    return value


class Config(BaseModel):
    """The live configuration: validated field by field, applied without restart, persisted."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # General
    access_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        json_schema_extra=_meta(
            "general", "Client tokens accepted by the proxy (empty: open, loopback bind only)", "value"
        ),
    )
    client_labels: dict[str, str] = Field(
        default_factory=dict,
        json_schema_extra=_meta(
            "general", 'Names for clients (access tokens) by client id, e.g. {"t_1a2b3c4d5e": "billing-service"}'
        ),
    )
    display_timezone: str = Field("UTC", json_schema_extra=_meta("general", "Time zone for dashboard charts"))
    language: Literal["en", "zh"] = Field("en", json_schema_extra=_meta("general", "Dashboard language"))
    max_body_mb: float = Field(20.0, gt=0, le=512, json_schema_extra=_meta("general", "Largest request body (MB)"))

    # Gemini upstream & pool
    upstream_url: str = Field(GOOGLE_URL, json_schema_extra=_meta("upstream", "Gemini API base URL"))
    outbound_proxy: str = Field("", json_schema_extra=_meta("upstream", "HTTP(S) proxy for upstream calls", "url"))
    strategy: Strategy = Field("quota_aware", json_schema_extra=_meta("upstream", "Key selection strategy"))
    max_retries: int = Field(3, ge=0, le=20, json_schema_extra=_meta("upstream", "Retries on another key"))
    connect_timeout_s: float = Field(10.0, gt=0, le=300, json_schema_extra=_meta("upstream", "Connect timeout (s)"))
    request_timeout_s: float = Field(
        300.0, gt=0, le=3600, json_schema_extra=_meta("upstream", "Read timeout per upstream attempt (s)")
    )
    call_deadline_s: float = Field(
        300.0,
        gt=0,
        le=3600,
        json_schema_extra=_meta(
            "upstream", "Deadline for a whole call, retries included, until its answer (or first stream chunk) (s)"
        ),
    )
    max_answer_mb: float = Field(
        64.0,
        gt=0,
        le=4096,
        json_schema_extra=_meta(
            "upstream", "Largest upstream answer read for a non-stream call (MB); larger ones get a 502"
        ),
    )
    default_cooldown_s: float = Field(
        60.0, ge=1, le=86400, json_schema_extra=_meta("upstream", "Cooldown after a 429 without details (s)")
    )
    failure_threshold: int = Field(
        5, ge=1, le=1000, json_schema_extra=_meta("upstream", "Consecutive failures before a key is disabled")
    )
    recheck_interval_s: float = Field(
        300.0, ge=1, le=86400, json_schema_extra=_meta("upstream", "How often invalid/failed keys are re-checked (s)")
    )
    priority_reserve: dict[str, float] = Field(
        default_factory=lambda: {"interactive": 0.0, "standard": 0.1, "batch": 0.3},
        json_schema_extra=_meta(
            "upstream",
            "Share of a model's quota kept from each client class: a class is refused while less is left "
            '(e.g. {"interactive": 0, "standard": 0.1, "batch": 0.3})',
        ),
    )
    model_limits: Annotated[dict[str, dict[str, int | None]], NoDecode] = Field(
        default_factory=dict,
        json_schema_extra=_meta("upstream", 'Per-model limits, e.g. {"gemini-2.5-pro": {"rpm": 5, "rpd": 100}}'),
    )

    # Routing & cost
    prices: Annotated[dict[str, Price], NoDecode] = Field(
        default_factory=default_prices,
        json_schema_extra=_meta(
            "routing",
            "Price per model, USD per 1M tokens (list prices shipped), e.g. "
            '{"gemini-2.5-flash": {"input_per_mtok": 0.3, "output_per_mtok": 2.5, "cached_input_per_mtok": 0.03}}',
        ),
    )
    project_tiers: Annotated[dict[str, Tier], NoDecode] = Field(
        default_factory=dict,
        json_schema_extra=_meta(
            "routing", 'Billing tier per project (absent: free), e.g. {"acme-prod": "paid"}; free calls cost 0'
        ),
    )
    fallbacks: Annotated[dict[str, list[str]], NoDecode] = Field(
        default_factory=dict,
        json_schema_extra=_meta(
            "routing",
            'Models to serve instead when the pool has no headroom for one, in order, e.g. {"gemini-2.5-pro": '
            '["gemini-2.5-flash"]}',
        ),
    )
    fallback_enabled: bool = Field(
        False,
        json_schema_extra=_meta("routing", "Clients get fallback answers (off: they get the 429 of the model asked)"),
    )
    aliases: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        json_schema_extra=_meta(
            "routing", 'Client-facing model names for Gemini models, e.g. {"gpt-4o-mini": "gemini-2.5-flash"}'
        ),
    )
    paid_daily_cap_usd: float | None = Field(
        None,
        ge=0,
        le=1_000_000,
        json_schema_extra=_meta(
            "routing", "Stop using paid projects for the rest of the quota day once their spend reaches this (USD)"
        ),
    )

    # Logging & retention
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", json_schema_extra=_meta("logging", "Log level")
    )
    log_request_bodies: bool = Field(
        False, json_schema_extra=_meta("logging", "Record request bodies of failed calls (secrets redacted)")
    )
    retention_requests_days: int = Field(90, ge=1, le=3650, json_schema_extra=_meta("logging", "Keep requests (days)"))
    retention_attempts_days: int = Field(30, ge=1, le=3650, json_schema_extra=_meta("logging", "Keep attempts (days)"))
    retention_error_logs_days: int = Field(
        30, ge=1, le=3650, json_schema_extra=_meta("logging", "Keep error logs (days)")
    )
    snapshot_interval_s: int = Field(
        300, ge=0, le=86400, json_schema_extra=_meta("logging", "Parquet snapshot period (s, 0 = off)")
    )
    query_timeout_s: float = Field(10.0, gt=0, le=600, json_schema_extra=_meta("logging", "SQL page time limit (s)"))
    query_row_cap: int = Field(100_000, ge=1, le=10_000_000, json_schema_extra=_meta("logging", "SQL page row cap"))
    query_byte_cap_mb: float = Field(
        32.0, gt=0, le=1024, json_schema_extra=_meta("logging", "SQL page size cap (MB of answer)")
    )
    explore_timeout_s: float = Field(15.0, gt=0, le=600, json_schema_extra=_meta("logging", "Explore time limit (s)"))

    # Alerts
    alert_interval_s: int = Field(
        15, ge=1, le=3600, json_schema_extra=_meta("alerts", "How often alert rules are evaluated (s)")
    )
    retention_alert_history_days: int = Field(
        30, ge=1, le=3650, json_schema_extra=_meta("alerts", "Keep alert history (days)")
    )
    dashboard_url: str = Field(
        "http://127.0.0.1:8501", json_schema_extra=_meta("alerts", "Dashboard address linked from alert messages")
    )

    _split = field_validator("access_tokens", mode="before")(_split_tokens)

    @field_validator("dashboard_url")
    @classmethod
    def _dashboard_url(cls, v: str) -> str:
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as http://127.0.0.1:8501")
        return v.strip().rstrip("/")

    @field_validator("upstream_url")
    @classmethod
    def _upstream_url(cls, v: str) -> str:
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http(s) URL such as https://generativelanguage.googleapis.com")
        return v.strip().rstrip("/")

    @field_validator("outbound_proxy")
    @classmethod
    def _proxy_url(cls, v: str) -> str:
        v = v.strip()
        if v and (urlsplit(v).scheme not in ("http", "https") or not urlsplit(v).hostname):
            raise ValueError("must be empty or an http(s) proxy URL such as http://127.0.0.1:3128")
        return v

    @field_validator("display_timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as Asia/Shanghai)") from None
        return v

    @field_validator("client_labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > 1000:
            raise ValueError("at most 1,000 client labels")
        out = {}
        for client, label in v.items():
            if not CLIENT_ID.fullmatch(client):
                raise ValueError(f"{client[:40]!r} is not a client id (t_ and 10 hex digits, or anonymous)")
            text = label.strip() if isinstance(label, str) else ""
            if not 1 <= len(text) <= 64 or not text.isprintable():
                raise ValueError(f"the label of {client} must be 1 to 64 printable characters")
            out[client] = text
        return out

    @field_validator("priority_reserve")
    @classmethod
    def _check_reserve(cls, value: dict[str, float]) -> dict[str, float]:
        classes = ("interactive", "standard", "batch")
        unknown = sorted(set(value) - set(classes))
        if unknown:
            raise ValueError(f"unknown client class {unknown[0]!r}: the classes are {', '.join(classes)}")
        for name, share in value.items():
            if not 0.0 <= share <= 0.9:
                raise ValueError(f"{name}: {share} is not a share between 0 and 0.9 of a model's quota")
        return value

    @field_validator("model_limits", "prices", "project_tiers", "fallbacks", "aliases", mode="before")
    @classmethod
    def _json_text(cls, v: Any, info: ValidationInfo) -> Any:
        # From the environment the value is JSON text: a parse error is one line naming the setting, not a traceback.
        if isinstance(v, str):
            if not v.strip():
                return {}
            try:
                return json.loads(v)
            except ValueError as exc:
                raise ValueError(
                    f"not valid JSON ({exc}); expected e.g. {_JSON_EXAMPLES[str(info.field_name)]}"
                ) from None
        return v

    @field_validator("model_limits")
    @classmethod
    def _limits(cls, v: dict[str, dict[str, int | None]]) -> dict[str, dict[str, int | None]]:
        for model, lim in v.items():
            bad = set(lim) - {"rpm", "rpd", "tpm"}
            if bad:
                raise ValueError(f"{model}: unknown limit {sorted(bad)[0]!r} (allowed: rpm, rpd, tpm)")
            for name, n in lim.items():
                if n is not None and n < 0:
                    raise ValueError(f"{model}.{name} must be ≥ 0")
        return v

    @field_validator("prices")
    @classmethod
    def _prices(cls, v: dict[str, Price]) -> dict[str, Price]:
        if len(v) > MAX_MODELS:
            raise ValueError(f"at most {MAX_MODELS} models")
        for model in v:
            if not is_model_name(model):
                raise ValueError(f"{model[:40]!r} is not a model id (such as gemini-2.5-flash)")
        return v

    @field_validator("fallbacks")
    @classmethod
    def _fallbacks(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        if len(v) > MAX_MODELS:
            raise ValueError(f"at most {MAX_MODELS} models")
        for model, chain in v.items():
            for name in (model, *chain):
                if not is_model_name(name):
                    raise ValueError(f"{name[:40]!r} is not a model id (such as gemini-2.5-flash)")
            if not 1 <= len(chain) <= MAX_CHAIN:
                raise ValueError(f"{model}: a chain of 1 to {MAX_CHAIN} models")
            if model in chain or len(set(chain)) != len(chain):
                raise ValueError(f"{model}: a chain names each model once, and not {model} itself")
        return v

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, v: dict[str, str]) -> dict[str, str]:
        if len(v) > MAX_MODELS:
            raise ValueError(f"at most {MAX_MODELS} aliases")
        for name, target in v.items():
            for text in (name, target):
                if not is_model_name(text):
                    raise ValueError(f"{text[:40]!r} is not a model name (letters, digits, . _ -)")
            if target == name or target in v:
                raise ValueError(
                    f"{name}: the target must be a model, not {'itself' if target == name else 'an alias'}"
                )
        return v

    @field_validator("project_tiers")
    @classmethod
    def _tiers(cls, v: dict[str, Tier]) -> dict[str, Tier]:
        if len(v) > 10_000:
            raise ValueError("at most 10,000 projects")
        for project in v:
            if not valid_project(project):
                raise ValueError(f"{project[:40]!r} is not a project name")
        return v

    @classmethod
    def secret_fields(cls) -> dict[str, SecretKind]:
        """Secret settings and how each is hidden, from the field metadata (the one declaration)."""
        return {name: kind for name, info in cls.model_fields.items() if (kind := _secret_kind(info))}

    @classmethod
    def masked_value(cls, name: str, value: Any) -> Any:
        """`value` of setting `name` in a form safe to show or log."""
        kind = cls.secret_fields().get(name)
        if kind is None or not value:
            return value
        if kind == "url":
            return mask_url(value) if isinstance(value, str) else "***"
        if isinstance(value, list):
            return [mask(str(v)) for v in value]
        return mask(str(value))

    def masked(self) -> dict[str, Any]:
        """Values safe to show: secret fields masked."""
        return {name: self.masked_value(name, value) for name, value in self.model_dump().items()}

    def unmasked(self, patch: dict[str, Any]) -> dict[str, Any]:
        """`patch` with secret values sent back in their masked form (an editor round trip) replaced by the real
        ones, so saving a form never overwrites a secret with its mask."""
        out = dict(patch)
        for name in set(patch) & set(self.secret_fields()):
            current, value = getattr(self, name), patch[name]
            if isinstance(current, list) and isinstance(value, str):
                value = _split_tokens(value)  # "tok-1, clie…-abc" (the env's comma form) is a list too
            if isinstance(current, list) and isinstance(value, list):
                real = {self.masked_value(name, [v])[0]: v for v in current}
                out[name] = [real.get(v, v) if isinstance(v, str) else v for v in value]
                # A mask that matches no current secret would be stored as the secret and lock its client out.
                stray = [v for v in out[name] if isinstance(v, str) and "…" in v and v not in current]
                if stray:
                    raise ConfigError(
                        {
                            name: f"{stray[0]!r} is a masked value that matches none of the current ones: send the real one"
                        }
                    )
            elif current and value == self.masked_value(name, current):
                out[name] = current
        return out

    def secret_values(self) -> list[str]:
        """Every secret string these settings hold (tokens, URL passwords), for redaction."""
        out: list[str] = []
        for name, kind in self.secret_fields().items():
            value = getattr(self, name, None)
            if not value:
                continue
            if kind == "url":
                out.extend(url_secrets(value))
            else:
                out.extend(str(v) for v in value) if isinstance(value, list) else out.append(str(value))
        return out

    @classmethod
    def fields(cls) -> list[dict[str, Any]]:
        """Field descriptions for editors (the dashboard's Config page)."""
        schema = cls.model_json_schema()["properties"]
        out = []
        for name, info in cls.model_fields.items():
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            prop = schema.get(name, {})
            out.append(
                {
                    "name": name,
                    "section": extra.get("section"),
                    "description": extra.get("description"),
                    "secret": bool(extra.get("secret")),
                    "secret_kind": extra.get("secret"),
                    "type": prop.get("type", "object"),
                    "choices": prop.get("enum"),
                    "minimum": prop.get("minimum", prop.get("exclusiveMinimum")),
                    "maximum": prop.get("maximum"),
                }
            )
        return out

    def updated(self, patch: dict[str, Any]) -> Config:
        """A new Config with `patch` applied; raises ConfigError naming every bad field."""
        unknown = sorted(set(patch) - set(type(self).model_fields))
        if unknown:
            raise ConfigError({name: "unknown setting" for name in unknown})
        try:
            return type(self).model_validate({**self.model_dump(), **patch})
        except ValidationError as exc:
            raise ConfigError.from_validation(exc) from None


class ConfigError(ValueError):
    """Invalid configuration values, keyed by field name."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))

    @classmethod
    def from_validation(cls, exc: ValidationError) -> ConfigError:
        errors: dict[str, str] = {}
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "config"
            msg = err["msg"].removeprefix("Value error, ")
            errors.setdefault(field, msg)
        return cls(errors)


class Settings(BaseSettings, Config):
    """Startup settings from the environment and `.env`; the Config fields here only seed the live config."""

    model_config = SettingsConfigDict(env_prefix="KEYRACK_", env_file=ENV_FILE, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    data_dir: Path = Path("./data")
    api_keys: str = Field("", json_schema_extra={"secret": "value"})
    admin_token: str = Field("", json_schema_extra={"secret": "value"})
    # DuckDB's own limits for the store connection: one analytics query must not take the proxy's memory or cores.
    duckdb_memory_limit: str = "256MB"
    duckdb_threads: int = Field(2, ge=1, le=64)
    # User SQL runs in worker processes (sql_sandbox): DuckDB's memory_limit there, in MB (unset: the same as
    # duckdb_memory_limit); each worker's address space is capped at this plus sql_sandbox.ADDRESS_HEADROOM_MB.
    sql_worker_memory_mb: int | None = Field(None, ge=16, le=65_536)
    duckdb_block_size: int = DUCKDB_BLOCK_SIZE  # bytes, for a new database file
    duckdb_row_group_size: int = Field(DUCKDB_ROW_GROUP_SIZE, ge=2_048, le=122_880)
    duckdb_wal_autocheckpoint: str = "4MiB"  # WAL size at which DuckDB checkpoints (store.py says why 4 MiB)
    # Cluster mode (proxy_service/cluster/): all three set = replicas share Redis pool state and a DuckLake on
    # PostgreSQL; none set = the embedded default. The URLs may carry passwords (masked everywhere).
    redis_url: str = Field("", json_schema_extra={"secret": "url"})
    lake_catalog: str = Field("", json_schema_extra={"secret": "url"})
    lake_data: str = Field("", json_schema_extra={"secret": "url"})
    replica_id: str = ""  # default hostname:port
    redis_prefix: str = "keyrack"  # every Redis key starts `<prefix>:` (checked in cluster/config.py)
    # Where event rows go while the data disk fails (read-only, full): memory up to these caps, then this directory,
    # which must be on another disk (a directory on the data disk is refused at start). Empty: memory only.
    event_spill_dir: Path | None = None
    event_spill_memory_rows: int = Field(200_000, ge=100, le=10_000_000)
    event_spill_memory_mb: int = Field(128, ge=1, le=16_384)
    event_spill_dir_mb: int = Field(2_048, ge=1, le=1_048_576)
    lake_commit_interval_s: float = Field(1.0, gt=0, le=60)
    lake_max_waiting_rows: int = Field(100_000, ge=1, le=10_000_000)  # past this, waiting rows spill to files
    # TLS served by Keyrack itself (both or neither): the Live API's SDKs open `wss://` only, so a deployment
    # without a TLS-terminating proxy in front needs the proxy to speak TLS (startup.check_tls reads the pair).
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    # Live sessions (surfaces/live.py): the largest WebSocket message either way, a session with no message
    # either way for this long is closed, and no session outlives the maximum (it holds a key's slot meanwhile).
    live_max_frame_mb: float = Field(4.0, gt=0, le=64)
    live_idle_timeout_s: float = Field(300.0, gt=0, le=86_400)
    live_max_session_s: float = Field(3_600.0, gt=0, le=86_400)

    @field_validator("api_keys")
    @classmethod
    def _api_keys(cls, v: str) -> str:
        parse_key_list(v)  # raises KeyListError naming (masked) every entry that cannot be a Gemini API key
        return v

    def config(self) -> Config:
        return Config.model_validate({k: getattr(self, k) for k in Config.model_fields})

    @property
    def sql_memory_mb(self) -> int:
        """DuckDB's memory_limit in the SQL workers, in MB: `sql_worker_memory_mb`, else `duckdb_memory_limit`."""
        if self.sql_worker_memory_mb is not None:
            return self.sql_worker_memory_mb
        m = re.fullmatch(r"(?i)(\d+(?:\.\d+)?)(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", self.duckdb_memory_limit)
        if m is None:  # validated already; never reached
            return 256
        unit = m.group(2).lower()
        scale = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30}
        return max(1, int(float(m.group(1)) * scale.get(unit, 2**40) / 2**20))

    @property
    def db_path(self) -> Path:
        return self.data_dir / "keyrack.duckdb"

    @field_validator("sql_worker_memory_mb", mode="before")
    @classmethod
    def _sql_memory(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("tls_certfile", "tls_keyfile", mode="before")
    @classmethod
    def _tls_path(cls, v: object) -> object:
        return None if v is None or (isinstance(v, str) and not v.strip()) else v

    @field_validator("event_spill_dir", mode="before")
    @classmethod
    def _spill_dir(cls, v: object) -> object:
        return None if v is None or (isinstance(v, str) and not v.strip()) else v

    @field_validator("duckdb_block_size")
    @classmethod
    def _block_size(cls, v: int) -> int:
        if v not in BLOCK_SIZES:
            raise ValueError(f"must be one of {', '.join(map(str, BLOCK_SIZES))} (bytes)")
        return v

    @field_validator("duckdb_row_group_size")
    @classmethod
    def _row_group_size(cls, v: int) -> int:
        if v % 2_048:
            raise ValueError("must be a multiple of 2048 (rows)")
        return v

    @field_validator("duckdb_memory_limit", "duckdb_wal_autocheckpoint")
    @classmethod
    def _memory_limit(cls, v: str) -> str:
        v = v.strip().replace(" ", "")
        if not re.fullmatch(r"(?i)\d+(\.\d+)?(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", v):
            raise ValueError("must be a size such as 256MB or 1GB")
        return v


def is_loopback(host: str | None) -> bool:
    """A loopback name or address (localhost, *.localhost, 127.0.0.0/8, ::1), with or without [brackets]."""
    if not host:
        return False
    host = host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_access(host: str, config: Config) -> None:
    """Fail closed: the effective client-token list may be empty only while the proxy is bound to loopback."""
    if not config.access_tokens and not is_loopback(host):
        raise ConfigError(
            {
                "access_tokens": f"cannot be empty while the proxy listens on {host} (not loopback): anyone who "
                "can reach it could spend your keys. Set at least one token, or bind to 127.0.0.1."
            }
        )
