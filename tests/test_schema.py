from __future__ import annotations

import json

import pytest

from harness.errors import BenchError
from harness.publish.results import SCHEMA_PATH, json_schema, load_results


def test_committed_schema_matches_the_model():
    committed = json.loads(SCHEMA_PATH.read_text())
    assert committed == json.loads(json.dumps(json_schema(), sort_keys=True)), (
        "leaderboard/schema.json is stale: run `python -m harness.publish.results`"
    )


def test_readers_reject_unknown_versions_and_fields(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(BenchError, match="unknown schema_version 99"):
        load_results(p)
    p.write_text("{not json")
    with pytest.raises(BenchError, match="cannot read"):
        load_results(p)
