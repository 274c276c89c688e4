"""Two members at once against the team's shared servers on PostgreSQL (bench/team_load.py): three
pipelines each and a sweep of eight points each; nothing fails and no record is lost."""

import importlib.util
from pathlib import Path

import pytest

from tests.integration.servers import needs_postgres

pytestmark = [pytest.mark.integration, pytest.mark.slow, needs_postgres]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "team_load.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("team_load", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_two_members_load_the_postgresql_deployment_without_losing_anything(tmp_path):
    bench = load_bench()
    figures = bench.run_load("postgresql", tmp_path)
    assert figures["errors"] == [] and figures["lost"] == [], figures
    assert figures["completed"] == figures["runs"] == 2 * (len(bench.CONFIGS) + 1)
    assert figures["probes"] > 0 and figures["prefect_p95_ms"] is not None
