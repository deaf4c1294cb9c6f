"""The cluster bench works (tiny sizes): three writer processes commit every event, the rollup matches."""

from __future__ import annotations

import json

from bench import cluster
from bench.common import RESULTS


def test_cluster_bench_ingest_commits_every_event_from_three_writers() -> None:
    assert cluster.main(["--only", "ingest", "--events", "2000"]) == 0
    figures = json.loads((RESULTS / "cluster.json").read_text())["ingest"]
    assert figures["committed"] == 6000 and figures["lost"] == 0 and figures["rollup_matches"]
    assert figures["events_per_s"] > 0
