"""docs/ARCHITECTURE.md's module map names every module of proxy_service/ and nothing that is gone."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_module_map_matches_the_tree() -> None:
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("## Modules (`proxy_service/`)", 1)[1].split("\n## ", 1)[0]
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    documented = {name for cell in first_cells for name in re.findall(r"`([\w/]+\.py)`", cell)}
    package = REPO / "proxy_service"
    modules = {str(p.relative_to(package)) for p in package.rglob("*.py") if p.name != "__init__.py"}
    assert documented == modules, f"undocumented: {sorted(modules - documented)}; gone: {sorted(documented - modules)}"
