"""Executor-side aggregation on the real stack: Spark executors, Delta tables, chunks as the job stores them.

A version made shard by shard on executors from ``update_chunks`` is bit-identical to the one the driver
makes whole from the same parent and updates (parameters, optimizer slots and scalars, recorded weights), and
the audit's recomputation from the recorded weights gives it again (differential privacy on executors is tested
through the job: ``test_job_on_executors.py``). One run uses a ``local-cluster`` master:
two executor JVMs of their own, so the shards really are computed away from the driver.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aggregator import AggregationConfig
from tests.integration import executor_scenario

pytestmark = pytest.mark.stack

CONFIGS = {
    "trimmed_yogi": {"mode": "fedbuff", "buffer_size": 4, "server_optimizer": "yogi", "server_learning_rate": 0.01,
                     "robust_aggregation": "trimmed_mean", "trim_fraction": 0.25, "max_update_norm": 1.0},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_executors_make_the_version_the_driver_makes_bit_for_bit(spark, tmp_path: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    config = AggregationConfig.from_dict(CONFIGS[name])
    outcome = executor_scenario.run(spark, tmp_path, f"model_{name}", config, again=name == "trimmed_yogi")
    assert outcome.identical_weights, outcome.weights
    assert outcome.identical_parameters
    assert outcome.identical_slots
    assert outcome.identical_scalars
    assert outcome.root_matches
    assert outcome.audit_recomputes
    assert outcome.published_matches  # fl.models gets the chunks the whole version would have made
    if name == "trimmed_yogi":
        assert len(set(outcome.weights)) > 1  # weights from staleness and data, not all alike


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
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    assert lines, completed.stderr[-4000:]
    found = json.loads(lines[-1])
    assert found["master"] == "local-cluster[2,1,1024]" and found["executors"] == 2
    assert found["identical_weights"] and found["identical_parameters"] and found["identical_slots"]
    assert found["identical_scalars"] and found["root_matches"] and found["audit_recomputes"]
    assert found["published_matches"]
    assert sum(weight == 0.0 for weight in found["weights"]) == 1  # Multi-Krum left out the outlier
