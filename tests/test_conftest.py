"""The suite's scheduling table (tests/conftest.py) names tests that exist: a renamed file or test would silently
leave its group and run beside the tests it must not overlap."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import FIRST, GROUPS, group_of

REPO = Path(__file__).resolve().parents[1]


def test_every_grouped_file_and_test_exists() -> None:
    for key in GROUPS:
        file, _, test = key.partition("::")
        path = REPO / file
        assert path.is_file(), f"{file} (in GROUPS) does not exist"
        if test:
            names = {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
            assert test in names, f"{key} (in GROUPS) names no test of {file}"


def test_a_test_of_its_own_in_groups_leaves_the_rest_of_its_file_free() -> None:
    durability = "tests/cluster/test_durability.py"
    assert group_of(f"{durability}::test_three_starved_replicas_sigterm_then_sigkill_every_answer_once") == "heavy"
    assert group_of(f"{durability}::test_stop_journals_everything_queued_however_slow_the_lake") is None
    assert group_of("tests/dashboard/test_browser.py::test_deep_link_and_reload_on_every_page[x]") == "heavy"
    assert set(GROUPS.values()) <= set(FIRST)
