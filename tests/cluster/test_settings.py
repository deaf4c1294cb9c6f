"""Cluster settings: all three or none, one-line startup errors, passwords masked (no services needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy_service.cluster.config import ClusterConfigError, from_settings, mask_url, pg_conninfo, secrets_of
from proxy_service.settings import Settings, url_secrets
from tests.test_cli import serve_fails

CATALOG = "postgresql://keyrack:s3cret-pw@db.internal:5432/keyrack"


def settings(**values: str) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_embedded_default_needs_no_cluster_settings() -> None:
    assert from_settings(settings()) is None


@pytest.mark.parametrize("given", ["redis_url", "lake_catalog", "lake_data"])
def test_any_one_alone_is_an_error_naming_the_missing_ones(given: str) -> None:
    values = {"redis_url": "redis://127.0.0.1:6379/0", "lake_catalog": CATALOG, "lake_data": "/srv/lake"}
    with pytest.raises(ClusterConfigError) as err:
        from_settings(settings(**{given: values[given]}))
    message = str(err.value)
    assert f"KEYRACK_{given.upper()} set" in message
    for other in set(values) - {given}:
        assert f"KEYRACK_{other.upper()}" in message.split(" set but ")[1]
    assert "s3cret-pw" not in message and "\n" not in message


def test_all_three_make_a_cluster_with_a_hostname_port_replica_id() -> None:
    cfg = from_settings(
        settings(redis_url="redis://127.0.0.1:6379/3", lake_catalog=CATALOG, lake_data="/srv/lake", port="9001")
    )
    assert cfg is not None
    assert cfg.replica_id.endswith(":9001") and len(cfg.replica_id) > 5
    assert cfg.commit_interval_s <= 2.0  # the default commit interval
    assert "s3cret-pw" not in str(cfg.masked())
    named = from_settings(settings(redis_url="redis://h/0", lake_catalog=CATALOG, lake_data="/l", replica_id="eu-1"))
    assert named is not None and named.replica_id == "eu-1"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("redis_url", "http://127.0.0.1:6379", "must be a redis:// URL"),
        ("lake_catalog", "mysql://root@h/db", "must be a PostgreSQL URL"),
        ("lake_catalog", "postgresql://u:s3cret-pw@h:5432", "with a database name"),
        ("lake_data", "ftp://files/lake", "directory every replica reaches or an s3:// URL"),
        ("replica_id", "a b;c", "1-64 characters"),
        ("redis_prefix", "team a", "1-40 characters"),
        ("redis_prefix", "k{1}*", "1-40 characters"),
        ("redis_prefix", "x" * 41, "1-40 characters"),
    ],
)
def test_malformed_values_are_named(name: str, value: str, expected: str) -> None:
    values = {"redis_url": "redis://127.0.0.1:6379/0", "lake_catalog": CATALOG, "lake_data": "/srv/lake", name: value}
    with pytest.raises(ClusterConfigError, match=expected) as err:
        from_settings(settings(**values))
    assert f"KEYRACK_{name.upper()}" in str(err.value) and "s3cret-pw" not in str(err.value)


def test_redis_prefix_defaults_to_keyrack_and_is_shown() -> None:
    values = {"redis_url": "redis://h/0", "lake_catalog": CATALOG, "lake_data": "/l"}
    default = from_settings(settings(**values))
    assert default is not None and default.redis_prefix == "keyrack"
    team = from_settings(settings(**values, redis_prefix="team-b.prod"))
    assert team is not None and team.redis_prefix == "team-b.prod" and team.masked()["redis_prefix"] == "team-b.prod"


def test_serve_refuses_a_bad_redis_prefix_in_one_line(tmp_path: Path) -> None:
    line = serve_fails(
        tmp_path,
        redis_url="redis://127.0.0.1:6379/0",
        lake_catalog=CATALOG,
        lake_data=str(tmp_path / "lake"),
        redis_prefix="my keys",
    )
    assert "KEYRACK_REDIS_PREFIX='my keys': 1-40 characters" in line


def test_masking_and_conninfo() -> None:
    assert mask_url(CATALOG) == "postgresql://keyrack:***@db.internal:5432/keyrack"
    assert mask_url("redis://:pw123456@r:6379/0") == "redis://:***@r:6379/0"
    assert mask_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert mask_url("host=h password='a b' dbname=x") == "host=h password=*** dbname=x"
    assert mask_url("s3://bucket/lake?secret=abc") == "s3://bucket/lake?secret=***"
    # A database URL's user without a password is a role name, not a token: kept, and never a redacted word.
    assert mask_url("postgresql://postgres@127.0.0.1:5432/k") == "postgresql://postgres@127.0.0.1:5432/k"
    assert mask_url("https://hook-token-1@hooks.example/x") == "https://***@hooks.example/x"
    assert url_secrets("postgres://postgres@h/k") == [] and url_secrets("https://tok@h/") == ["tok"]
    assert secrets_of(CATALOG) == ["s3cret-pw"]
    assert pg_conninfo(CATALOG) == "dbname='keyrack' host='db.internal' port='5432' user='keyrack' password='s3cret-pw'"
    assert pg_conninfo("postgresql://u:it's@h/d") == "dbname='d' host='h' user='u' password='it\\'s'"


def test_serve_refuses_one_setting_alone_in_one_line(tmp_path: Path) -> None:
    line = serve_fails(tmp_path, lake_catalog=CATALOG)
    assert "cluster mode needs all of KEYRACK_REDIS_URL, KEYRACK_LAKE_CATALOG and KEYRACK_LAKE_DATA" in line
    assert "s3cret-pw" not in line


def test_serve_refuses_an_unreachable_redis_in_one_line(tmp_path: Path) -> None:
    line = serve_fails(
        tmp_path, redis_url="redis://:pw-123456@127.0.0.1:1/0", lake_catalog=CATALOG, lake_data=str(tmp_path / "lake")
    )
    assert line.startswith("Error: cannot reach Redis at redis://:***@127.0.0.1:1/0")
    assert "pw-123456" not in line
