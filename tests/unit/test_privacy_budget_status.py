"""Why training stopped is visible to an operator and an auditor: the status file and the MLflow run."""

import json
from datetime import UTC, datetime
from pathlib import Path

from aggregator import AggregationConfig, BudgetCheck
from schemas.rows import ModelVersionRow
from streaming_jobs.job import JobProgress
from streaming_jobs.mlflow_recorder import MlflowRecorder
from streaming_jobs.settings import JobSettings
from streaming_jobs.update_batch import BatchOutcome
from tests.rows import version_row

NOW = datetime(2025, 3, 1, tzinfo=UTC)
REFUSAL = BudgetCheck(budget=8.0, spent=7.5, next_epsilon=8.4, version=12)


def _row(version: int, epsilon: float | None, exhausted: bool | None) -> ModelVersionRow:
    assumption = None if epsilon is None else "no_amplification"
    return version_row(
        version, created_at=NOW, epsilon=epsilon, epsilon_assumption=assumption, privacy_budget_exhausted=exhausted
    )


def _outcome(batch_id: int, versions: tuple[int, ...], pending: int) -> BatchOutcome:
    return BatchOutcome(
        batch_id=batch_id,
        messages=0,
        accepted=0,
        rejected=0,
        rejected_by_reason={},
        already_recorded=0,
        new_versions=versions,
        current_version=versions[-1] if versions else 12,
        pending=pending,
        seconds={},
    )


def test_the_status_file_says_what_epsilon_assumes_and_that_the_budget_stopped_training(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    progress = JobProgress(status)
    progress.record(_outcome(1, (11, 12), 0), [_row(11, 7.1, False), _row(12, 7.5, True)])
    document = json.loads(status.read_text())
    assert document["epsilon"] == 7.5
    assert document["privacy"] == {
        "epsilon": 7.5,
        "epsilon_assumption": "no_amplification",
        "budget_exhausted": True,
        "version": 12,
        "refusal": None,
    }
    progress.record(_outcome(2, (), 4), [], REFUSAL)
    privacy = json.loads(status.read_text())["privacy"]
    assert privacy["budget_exhausted"] is True and privacy["epsilon"] == 7.5
    assert "privacy budget exhausted" in privacy["refusal"] and "after version 12" in privacy["refusal"]


def test_without_dp_the_status_has_no_privacy_section(tmp_path: Path) -> None:
    status = tmp_path / "status.json"
    JobProgress(status).record(_outcome(1, (1,), 0), [_row(1, None, None)])
    assert json.loads(status.read_text())["privacy"] is None


class _FakeClient:
    def __init__(self) -> None:
        self.tags: dict[str, str] = {}
        self.metrics: list[tuple[str, float, int]] = []

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.tags[key] = value

    def log_batch(self, run_id: str, metrics: list) -> None:  # type: ignore[type-arg]
        self.metrics += [(metric.key, metric.value, metric.step) for metric in metrics]


def test_mlflow_gets_the_assumption_the_exhausted_marker_and_the_refusal() -> None:
    recorder = object.__new__(MlflowRecorder)
    recorder.client = _FakeClient()  # type: ignore[assignment]
    recorder.run_id = "run"
    config = AggregationConfig.from_dict(
        {"weight_by_sample_count": False, "dp_noise_multiplier": 1.0, "dp_epsilon_budget": 8.0}
    )
    recorder.settings = JobSettings(aggregation=config, register_every=0)
    recorder.record([_row(11, 7.1, False), _row(12, 7.5, True)])
    client = recorder.client
    assert isinstance(client, _FakeClient)
    assert ("privacy_budget_exhausted", 1.0, 12) in client.metrics and (
        "privacy_budget_exhausted",
        0.0,
        11,
    ) in client.metrics
    assert client.tags["epsilon_assumption"] == "no_amplification"
    assert (
        "after version 12" in client.tags["privacy_budget_exhausted"]
        and "8.0" in client.tags["privacy_budget_exhausted"]
    )
    recorder.tag_budget_refusal(REFUSAL)
    assert client.tags["privacy_budget_exhausted"] == REFUSAL.describe()
