"""Executor-side aggregation on the real stack: Spark executors, Delta tables, chunks as the job stores them.

A version made shard by shard on executors from ``update_chunks`` is bit-identical to the one the driver
makes whole from the same parent and updates (parameters, optimizer slots and scalars, recorded weights), and
the audit's recomputation from the recorded weights gives it again (differential privacy on executors is tested
through the job: ``test_job_on_executors.py``). It runs on a ``local-cluster`` master: two executor JVMs of
their own, so the shards really are computed away from the driver, for each configuration of
:data:`executor_scenario.SCENARIOS` in one Spark application (one start of its JVMs).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration import executor_scenario

pytestmark = pytest.mark.stack


def test_a_local_cluster_of_two_executor_jvms_makes_the_same_version(tmp_path: Path) -> None:
    environment = {**os.environ, "FEDSTREAM_SPARK_MASTER": "local-cluster[2,1,1024]"}
    completed = subprocess.run(
        [sys.executable, "-m", "tests.integration.executor_scenario", str(tmp_path)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = [json.loads(line) for line in completed.stdout.splitlines() if line.startswith("{")]
    found = {outcome["scenario"]: outcome for outcome in lines}
    assert sorted(found) == sorted(executor_scenario.SCENARIOS), completed.stderr[-4000:]
    for name, outcome in found.items():
        assert outcome["master"] == "local-cluster[2,1,1024]" and outcome["executors"] == 2, name
        assert outcome["identical_weights"], (name, outcome["weights"])
        assert outcome["identical_parameters"] and outcome["identical_slots"], name
        assert outcome["identical_scalars"] and outcome["root_matches"] and outcome["audit_recomputes"], name
        assert outcome["published_matches"], name  # fl.models gets the chunks the whole version would have made
    assert len(set(found["trimmed_yogi"]["weights"])) > 1  # weights from staleness and data, not all alike
    assert sum(weight == 0.0 for weight in found["multi_krum_adam"]["weights"]) == 1  # Multi-Krum left out one
