"""Each meaning lives in one place: the key shape and masking, the project rule, time-bucket
flooring, the keys without their secret, the derived "cooling" status, reading `.env`, admin state on the gateway
and no reaching into another module's private names. These pin the shared
definitions; the modules that use them are tested through their own behaviour elsewhere."""

from __future__ import annotations

import ast
import os
import re
from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from proxy_service import envfile
from proxy_service.analytics import queries, snapshot, sql_guard
from proxy_service.analytics.buckets import floor_time
from proxy_service.keys import KEY_PATTERN, extract_keys, looks_like_key, mask, redact, valid_project
from proxy_service.pool import Cooldown, Key, Pool, shown_status
from proxy_service.store import PUBLIC_TABLES, SCHEMA, public_select

REPO = Path(__file__).resolve().parents[1]
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


def test_every_keyrack_name_the_product_reads_or_documents_is_known_to_the_unknown_setting_warning() -> None:
    """A name read outside `Settings` (the dashboard, compose files) must be in envfile.OTHER_NAMES, or every start
    would warn about it as a typo."""
    from proxy_service.startup import known_names

    places = [REPO / p for p in (".env.example", "docker-compose.yml", "docker-compose.cluster.yml", "Makefile")]
    places += [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / ".ci").glob("*")]
    places += [*(REPO / "proxy_service").rglob("*.py"), *(REPO / "dashboard").rglob("*.py")]
    seen = {
        (name, p.name)
        for p in places
        if p.is_file()
        for name in re.findall(r"KEYRACK_[A-Z0-9_]*[A-Z0-9]", p.read_text())
    }
    assert not {(name, where) for name, where in seen if name not in known_names()}


def test_unknown_keyrack_names_are_warned_with_the_nearest_known_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proxy_service.startup import unknown_setting_lines

    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.upper().startswith("KEYRACK_")]:
        monkeypatch.delenv(name)
    (tmp_path / ".env").write_text("KEYRACK_STRATGY=round_robin\nKEYRACK_ADMIN_URL=http://127.0.0.1:1\n")
    monkeypatch.setenv("KEYRACK_API_KEY", "p1:AIza...")
    monkeypatch.setenv("KEYRACK_PORT", "8080")
    monkeypatch.setenv("KEYRACK_ZZZQQQ", "1")
    assert unknown_setting_lines() == [
        "unknown setting KEYRACK_API_KEY; did you mean KEYRACK_API_KEYS? (set in the environment; ignored: "
        ".env.example lists every setting)",
        "unknown setting KEYRACK_STRATGY; did you mean KEYRACK_STRATEGY? (set in .env; ignored: .env.example lists "
        "every setting)",
        "unknown setting KEYRACK_ZZZQQQ (set in the environment; ignored: .env.example lists every setting)",
    ]


def test_flooring_handles_a_bucket_edge_exactly() -> None:
    edge = datetime(2026, 1, 1, 0, 15)
    assert floor_time(edge - timedelta(microseconds=1), 900) == datetime(2026, 1, 1)
    assert floor_time(edge, 900) == edge


def _project_trees() -> dict[str, ast.Module]:
    return {str(p.relative_to(REPO)): ast.parse(p.read_text()) for p in sorted((REPO / "proxy_service").rglob("*.py"))}


def test_time_flooring_has_one_helper_per_meaning() -> None:
    """Fixed grains (seconds since the epoch, as time_bucket) floor with `buckets.floor_time`, calendar units in a
    display zone (hour/day/week/month, as date_trunc) with `queries.floor_local`; nothing else floors (the
    forecast engine had its own `hour_floor`)."""
    floors = sorted(
        f"{path}:{node.name}"
        for path, tree in _project_trees().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and "floor" in node.name
    )
    assert floors == ["proxy_service/analytics/buckets.py:floor_time", "proxy_service/analytics/queries.py:floor_local"]


def test_admin_state_lives_on_the_gateway() -> None:
    """No module-level maps keyed by gateway (admin/forecast.py kept its engines in one): state hangs off the
    Gateway like the alert engine and the forecast engine."""
    for path, tree in _project_trees().items():
        names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not {"WeakKeyDictionary", "WeakValueDictionary"} & names, path


# Private names another module still reaches into. Shrink it, never grow it: a name used across modules is public.
PRIVATE_REACHES = {
    "proxy_service/cluster/node.py: proxy_service.cluster.pool._text",
    "proxy_service/analytics/explore.py: queries._dicts",
    "proxy_service/analytics/pool_queries.py: queries._bucket_sql",
    "proxy_service/analytics/pool_queries.py: queries._localise",
    "proxy_service/surfaces/openai.py: gemini._model",
}


def test_no_new_module_reaches_into_another_modules_private_names() -> None:
    found: set[str] = set()
    for path, tree in _project_trees().items():
        modules: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("proxy_service"):
                for alias in node.names:
                    if alias.name.startswith("_"):
                        found.add(f"{path}: {node.module}.{alias.name}")
                    modules.add(alias.asname or alias.name)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in modules
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                found.add(f"{path}: {node.value.id}.{node.attr}")
    assert found <= PRIVATE_REACHES, sorted(found - PRIVATE_REACHES)
    assert "proxy_service/alerts/backtest.py: proxy_service.analytics.queries._percentiles" not in found


# Libraries whose private names (a leading underscore) Keyrack must not touch: their next release may change them
# without notice. Reach them through their public API.
DEPENDENCIES = ("streamlit", "httpx", "aiohttp", "requests", "urllib3", "starlette", "uvicorn", "apprise", "redis")
# `x._name` on an object other than `self` / `cls` / a project module (those are PRIVATE_REACHES above): each is the
# project's own object or a documented API. Shrink it, never grow it.
OWN_PRIVATE_ATTRIBUTES = {
    "proxy_service/cluster/lake.py: parts._replace",  # namedtuple's documented method (the underscore avoids fields)
    "proxy_service/cluster/lake.py: rollup._lock",  # the project's own Rollup
    "proxy_service/cluster/lake.py: rollup._touched",
    "proxy_service/demo/fake_upstream.py: s._validate",  # the class's own validation, in its own classmethod
    "proxy_service/cluster/pool.py: super()._round_robin",  # its base class, the project's Pool
    "proxy_service/server.py: os._exit",  # the standard library's documented exit without cleanup
}
# A private module of a dependency named in a string: httpx's command-line client, kept out of the proxy process
# (server.without_pandas) because `import httpx` would load it with rich and pygments; no public switch exists.
PRIVATE_MODULE_NAMES = {"proxy_service/server.py: httpx._main"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(path: str, tree: ast.Module) -> set[str]:
    found: set[str] = set()
    project = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("proxy_service", "dashboard"))
        for alias in node.names
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            module = (node.module or "") if isinstance(node, ast.ImportFrom) else ""
            for alias in node.names:
                full = f"{module}.{alias.name}" if module else alias.name
                if full.split(".")[0] in DEPENDENCIES and any(_private(p) for p in full.split(".")):
                    found.add(f"{path}: import {full}")
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            value = node.value
            if isinstance(value, ast.Name) and (value.id in ("self", "cls") or value.id in project):
                continue
            found.add(f"{path}: {ast.unparse(value)}.{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            first = node.value.split(".")
            if len(first) > 1 and first[0] in DEPENDENCIES and _private(first[1]) and " " not in node.value:
                found.add(f"{path}: {node.value}")
    return found


def test_no_private_attribute_of_a_dependency_is_touched() -> None:
    found: set[str] = set()
    for package in ("proxy_service", "dashboard"):
        for p in sorted((REPO / package).rglob("*.py")):
            path = str(p.relative_to(REPO))
            found |= private_uses(path, ast.parse(p.read_text()))
    assert found <= OWN_PRIVATE_ATTRIBUTES | PRIVATE_MODULE_NAMES, sorted(
        found - OWN_PRIVATE_ATTRIBUTES - PRIVATE_MODULE_NAMES
    )


def test_the_private_use_check_sees_one() -> None:
    code = (
        "import streamlit as st\nfrom httpx._models import Response\n"
        "def f(resp, app):\n    resp._content = b''\n    st._config.x = 1\n    return 'aiohttp._http'\n"
    )
    assert private_uses("x.py", ast.parse(code)) == {
        "x.py: import httpx._models.Response",
        "x.py: resp._content",
        "x.py: st._config",
        "x.py: aiohttp._http",
    }


def test_one_utcnow_one_error_root_and_one_name_per_meaning() -> None:
    """`utcnow` is defined once (store.py); every exception answered over HTTP derives from errors.KeyrackError;
    no function is named `guarded` (the admin token guard and the surfaces' answer wrapper are named by meaning)."""
    defined: dict[str, list[str]] = {}
    http_errors = []
    for path, tree in _project_trees().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                defined.setdefault(node.name.lstrip("_"), []).append(path)
            if isinstance(node, ast.ClassDef) and node.name == "ApiError":
                http_errors.append(path)
    assert defined["utcnow"] == ["proxy_service/store.py"]
    assert "guarded" not in defined
    assert http_errors == ["proxy_service/errors.py"]
    from proxy_service.errors import ApiError, KeyrackError

    assert issubclass(ApiError, KeyrackError)


def test_the_alert_words_have_one_catalogue() -> None:
    """A state reads the same in a notice and on the dashboard: both take the words from alerts/words.py, and no
    other module spells one of them out again."""
    from dashboard.logic import i18n
    from proxy_service.alerts.notify import Notice, render
    from proxy_service.alerts.words import WORDS

    for lang in ("en", "zh"):
        assert i18n.STRINGS[lang]["alerts.state.firing"] == WORDS[lang]["firing"]
        assert i18n.STRINGS[lang]["alerts.kind.resolved"] == WORDS[lang]["resolved"]
    notice = Notice("r1", "Errors", "firing", "warning", "error_rate", ">", 0.05, 0.2, {}, 0.0, 0.0, "fired")
    title, body = render(notice, "zh", "http://127.0.0.1:8501")
    assert WORDS["zh"]["firing"] in title and WORDS["zh"]["threshold"] in body
    # 标签 is also a key's label on other pages (another meaning, the same Chinese word): not counted.
    spelled = {w for name, w in WORDS["zh"].items() if name != "labels"}
    again = []
    for package in ("proxy_service", "dashboard"):
        for p in sorted((REPO / package).rglob("*.py")):
            if p.name == "words.py":
                continue
            for node in ast.walk(ast.parse(p.read_text())):
                if isinstance(node, ast.Constant) and node.value in spelled:
                    again.append(f"{p.relative_to(REPO)}: {node.value}")
    assert not again, again
