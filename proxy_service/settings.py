"""Configuration.

Precedence: built-in defaults → environment / `.env` (prefix `KEYRACK_`) → the config saved in DuckDB by the
admin API. Env seeds a fresh install; once an operator saves a value in the dashboard, the saved value wins
(until `POST /admin/api/config/reset`). `Settings` adds what only makes sense at startup (where to bind, the
data directory, the initial upstream keys, the admin token).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Strategy = Literal["quota_aware", "round_robin", "least_used"]
GOOGLE_URL = "https://generativelanguage.googleapis.com"


def _meta(section: str, description: str, secret: bool = False) -> dict[str, Any]:
    return {"section": section, "description": description, "secret": secret}


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
        json_schema_extra=_meta("general", "Client tokens accepted by the proxy (empty: open, localhost only)", True),
    )
    display_timezone: str = Field("UTC", json_schema_extra=_meta("general", "Time zone for dashboard charts"))
    language: Literal["en", "zh"] = Field("en", json_schema_extra=_meta("general", "Dashboard language"))
    max_body_mb: float = Field(20.0, gt=0, le=512, json_schema_extra=_meta("general", "Largest request body (MB)"))

    # Gemini upstream & pool
    upstream_url: str = Field(GOOGLE_URL, json_schema_extra=_meta("upstream", "Gemini API base URL"))
    outbound_proxy: str = Field("", json_schema_extra=_meta("upstream", "HTTP(S) proxy for upstream calls"))
    strategy: Strategy = Field("quota_aware", json_schema_extra=_meta("upstream", "Key selection strategy"))
    max_retries: int = Field(3, ge=0, le=20, json_schema_extra=_meta("upstream", "Retries on another key"))
    connect_timeout_s: float = Field(10.0, gt=0, le=300, json_schema_extra=_meta("upstream", "Connect timeout (s)"))
    request_timeout_s: float = Field(
        300.0, gt=0, le=3600, json_schema_extra=_meta("upstream", "Read timeout per upstream attempt (s)")
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
    model_limits: dict[str, dict[str, int | None]] = Field(
        default_factory=dict,
        json_schema_extra=_meta("upstream", 'Per-model limits, e.g. {"gemini-2.5-pro": {"rpm": 5, "rpd": 100}}'),
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

    _split = field_validator("access_tokens", mode="before")(_split_tokens)

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

    def masked(self) -> dict[str, Any]:
        """Values safe to show: secret fields masked."""
        from proxy_service.keys import mask

        out = self.model_dump()
        out["access_tokens"] = [mask(t) for t in self.access_tokens]
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

    model_config = SettingsConfigDict(env_prefix="KEYRACK_", env_file=".env", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    data_dir: Path = Path("./data")
    api_keys: str = ""
    admin_token: str = ""

    def config(self) -> Config:
        return Config.model_validate({k: getattr(self, k) for k in Config.model_fields})

    @property
    def db_path(self) -> Path:
        return self.data_dir / "keyrack.duckdb"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
