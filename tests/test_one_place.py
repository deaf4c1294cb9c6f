"""Each meaning lives in one place: the key shape and masking, the project rule, time-bucket
flooring, the keys without their secret, the derived "cooling" status and reading `.env`. These pin the shared
definitions; the modules that use them are tested through their own behaviour elsewhere."""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from proxy_service import envfile, queries, snapshot, sql_guard
from proxy_service.keys import KEY_PATTERN, extract_keys, looks_like_key, mask, redact, valid_project
from proxy_service.pool import Cooldown, Key, Pool, shown_status
from proxy_service.rollup import floor_time
from proxy_service.store import PUBLIC_TABLES, SCHEMA, public_select

REAL_SHAPED = "AIza" + "Sy0_-" + "x" * 30  # "AIza" + 35 of [0-9A-Za-z_-]


def test_a_gemini_key_is_aiza_and_35_url_safe_characters() -> None:
    assert len(REAL_SHAPED) == 39 and looks_like_key(REAL_SHAPED)
    assert not looks_like_key(REAL_SHAPED[:-1])  # 34 after the prefix
    assert not looks_like_key(REAL_SHAPED + "x")  # 36
    assert not looks_like_key(REAL_SHAPED[:-1] + "+")  # outside the alphabet
    assert not looks_like_key("aiza" + REAL_SHAPED[4:])
    assert KEY_PATTERN.search(f"key={REAL_SHAPED}&x=1")


def test_masking_keeps_four_characters_each_side_wherever_the_key_is() -> None:
    assert mask(REAL_SHAPED) == "AIza…xxxx"
    assert redact(f"bad key {REAL_SHAPED}, twice: {REAL_SHAPED}.") == "bad key AIza…xxxx, twice: AIza…xxxx."
    assert redact("no key here AIzaShort") == "no key here AIzaShort"


def test_extraction_does_not_take_the_start_of_a_longer_token() -> None:
    longer = REAL_SHAPED + "-and-more"
    found = extract_keys(f"{REAL_SHAPED}\n{longer}")
    assert [k.secret for k in found.keys] == [REAL_SHAPED]  # the longer token cannot be a key: rejected, with why
    assert [(f.line, f.code) for f in found.rejected] == [(2, "bad_length")]


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("acme-prod", True),
        ("a.b_c", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("", False),
        ("has space", False),
        ("ünï", False),
    ],
)
def test_the_project_rule(name: str, ok: bool) -> None:
    assert valid_project(name) is ok


def test_flooring_matches_duckdb_time_bucket() -> None:
    con = duckdb.connect()
    t = datetime(2026, 3, 8, 9, 47, 31, 123456)
    for grain in (900, 3600, 86400):
        (expected,) = con.execute(f"SELECT time_bucket(INTERVAL {grain} SECOND, ?::TIMESTAMP)", [t]).fetchone()  # type: ignore[misc]
        assert floor_time(t, grain) == expected
    assert floor_time(t, 900) == datetime(2026, 3, 8, 9, 45)
    assert floor_time(datetime(2026, 3, 8, 10), 3600) == datetime(2026, 3, 8, 10)


def test_the_keys_leave_the_store_without_their_secret() -> None:
    assert "secret" in SCHEMA["keys"] and "EXCLUDE (secret)" in public_select("keys")
    assert queries.SAFE_TABLES["keys"] == snapshot.EXPORTS["keys"] == public_select("keys")
    assert set(queries.SAFE_TABLES) == set(snapshot.EXPORTS) == set(PUBLIC_TABLES)
    assert "secret" in sql_guard.FORBIDDEN_COLUMNS


def test_cooling_is_derived_the_same_way_for_one_key_and_for_the_counts() -> None:
    now = [1000.0]
    pool = Pool("quota_aware", clock=lambda: now[0])
    a = Key(id="k_a", secret="a" * 12, project="p")
    b = Key(id="k_b", secret="b" * 12, project="q", status="disabled")
    pool.load(a)
    pool.load(b)
    assert shown_status(a, True) == "cooling" and shown_status(b, True) == "disabled"
    assert pool.status_of(a) == "active" and pool.counts()["active"] == 1
    pool.cooldowns[("p", "gemini-2.5-flash")] = Cooldown(until=now[0] + 30, reason="minute")  # project p cools
    assert pool.status_of(a) == "cooling" and pool.counts() == {"active": 0, "cooling": 1, "invalid": 0, "disabled": 1}
    now[0] += 31
    assert pool.status_of(a) == "active" and pool.counts()["cooling"] == 0


def test_env_setting_reads_the_environment_then_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("# comment\nexport KEYRACK_ADMIN_URL='http://127.0.0.1:9999'\nKEYRACK_X=from-file\n")
    monkeypatch.delenv("KEYRACK_ADMIN_URL", raising=False)
    monkeypatch.setenv("KEYRACK_X", "from-env")
    assert envfile.env_setting("KEYRACK_ADMIN_URL") == "http://127.0.0.1:9999"
    assert envfile.env_setting("KEYRACK_X") == "from-env"
    assert envfile.env_setting("KEYRACK_NOPE") is None
    assert os.environ.get("KEYRACK_ADMIN_URL") is None  # reading does not export


def test_flooring_handles_a_bucket_edge_exactly() -> None:
    edge = datetime(2026, 1, 1, 0, 15)
    assert floor_time(edge - timedelta(microseconds=1), 900) == datetime(2026, 1, 1)
    assert floor_time(edge, 900) == edge
