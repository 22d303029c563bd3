"""MLflow for the job: one run per start, a step per global version, a registered model every N versions.

MLflow is a record for people, not part of a version's durability: versions are durable in Delta and
announced on ``fl.models`` before MLflow hears of them. :class:`BackgroundRecorder` therefore logs from its own
thread, so a slow or unreachable tracking server never holds a micro-batch, and it cannot lose a step:

- while running, work waits in an in-memory queue and is retried until MLflow takes it;
- on a clean stop the queue is drained (up to a deadline);
- after a crash, the next start asks MLflow for the newest version any earlier run of this model logged and
  the newest one registered, and logs every newer version from ``model_versions`` (:meth:`backfill`).

Parameters (hundreds of KB per version) are kept in the queue only for versions that will be registered.

A registered version is an MLflow model (``mlflow.pyfunc.load_model("models:/NAME/N")`` predicts with it) when the
settings name the model's architecture (``model_architecture``); otherwise it is the bare safetensors file of its
parameters, which no serving endpoint can load. torch is imported only to register such a model.
"""

from __future__ import annotations

import importlib.metadata
import logging
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aggregator import BudgetCheck
from schemas.rows import ModelVersionRow
from streaming_jobs.settings import JobSettings

logger = logging.getLogger(__name__)

MODEL_TAG = "fedstream.model_name"
"""Run tag naming the model a job run logs; a restart looks for earlier runs by it."""
RETRY_SECONDS = 5.0


class MlflowRecorder:
    """Logs versions to one MLflow run (created here) and registers every ``register_every``-th version."""

    def __init__(self, settings: JobSettings) -> None:
        from mlflow.tracking import MlflowClient

        from streaming_jobs.tracking import configure_mlflow, ensure_experiment

        configure_mlflow()
        self.settings = settings
        self.experiment_id = ensure_experiment(settings.mlflow_experiment)
        self.client = MlflowClient()
        self.run_id = self.client.create_run(
            self.experiment_id, run_name=f"{settings.model_name}-job", tags={MODEL_TAG: settings.model_name}
        ).info.run_id
        # The DP noise seed stays in model_versions.config_json (for audits); MLflow readers do not get it.
        config = {**settings.aggregation.to_dict()}
        if "dp_seed" in config:
            config["dp_seed"] = "secret: see model_versions.config_json"
        self.client.log_dict(self.run_id, config, "aggregation_config.json")
        for key, value in config.items():
            self.client.log_param(self.run_id, key, value)
        if settings.register_every and settings.model_architecture is None:
            logger.warning(
                "MLflow: registered versions of %s are bare safetensors files that no serving endpoint can load "
                "(and a Unity Catalog registry refuses); give the job --model-architecture to register MLflow models",
                settings.registered_model_name,
            )

    def newest_logged_version(self) -> int | None:
        """The highest ``global_version`` any run of this model has logged, None when none has."""
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{MODEL_TAG}` = '{self.settings.model_name}'"
        )
        logged = [run.data.metrics["global_version"] for run in runs if "global_version" in run.data.metrics]
        return int(max(logged)) if logged else None

    def newest_registered_version(self) -> int | None:
        """The highest ``global_version`` tag among the registered model's versions, None when none."""
        try:
            found = self.client.search_model_versions(f"name = '{self.settings.registered_model_name}'")
        except Exception:  # a registry without the model raises a generic MlflowException
            return None
        tagged = [int(version.tags["global_version"]) for version in found if "global_version" in version.tags]
        return max(tagged) if tagged else None

    def registers(self, version: int) -> bool:
        """Whether ``version`` is one the registry receives (every ``register_every``-th)."""
        return registered_version(version, self.settings.register_every)

    def record(self, rows: Sequence[ModelVersionRow], *, register: bool = True) -> None:
        """Log each row's metrics at its version's step; register the versions due (when ``register``)."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = []
        for row in rows:
            values = {
                "global_version": float(row.version),
                "updates_in_version": float(len(row.update_ids)),
                "staleness_mean": row.staleness_mean,
                "staleness_max": None if row.staleness_max is None else float(row.staleness_max),
                "federated_validation_accuracy": row.federated_validation_accuracy,
                "federated_validation_loss": row.federated_validation_loss,
                "epsilon": row.epsilon,
                "privacy_budget_exhausted": _as_float(row.privacy_budget_exhausted),
            }
            metrics += [Metric(k, v, stamp, row.version) for k, v in values.items() if v is not None]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)
        self._tag_privacy(rows)
        if register:
            for row in rows:
                if self.registers(row.version):
                    self.register(row)

    def _tag_privacy(self, rows: Sequence[ModelVersionRow]) -> None:
        newest = max(rows, key=lambda row: row.version, default=None)
        if newest is None or newest.epsilon is None:
            return
        self.client.set_tag(self.run_id, "epsilon_assumption", newest.epsilon_assumption or "")
        if newest.privacy_budget_exhausted:
            privacy = self.settings.aggregation.privacy
            budget = None if privacy is None else privacy.epsilon_budget
            self.client.set_tag(
                self.run_id,
                "privacy_budget_exhausted",
                f"privacy budget exhausted after version {newest.version} (epsilon {newest.epsilon:.4g}): the next "
                f"version would pass dp_epsilon_budget {budget}, so no further version is made",
            )

    def tag_budget_refusal(self, check: BudgetCheck) -> None:
        """Say on the run why no further version is made: the privacy budget."""
        self.client.set_tag(self.run_id, "privacy_budget_exhausted", check.describe())

    def register(self, row: ModelVersionRow) -> None:
        """Make ``row`` a version of the registered model: an MLflow model, else its parameters as an artifact.

        The model version carries the lineage as tags: ``global_version``, ``parameter_hash``,
        ``fedstream_version`` and, for a private model, ``epsilon`` and ``epsilon_assumption``. A version kept as
        shards (made on executors) is not registered: its parameters are in ``model_shards``, not in the row.
        """
        if row.shards_key is not None:
            logger.info("MLflow: version %d is kept as shards in model_shards; not registered", row.version)
            return
        name = self.settings.registered_model_name
        try:
            self.client.get_registered_model(name)
        except Exception:  # MLflow raises a generic MlflowException when it is missing
            self.client.create_registered_model(name)
        tags = lineage_tags(row)
        logged = self._log_model(row) if self.settings.model_architecture is not None else None
        if logged is None:
            source, model_id = self._log_parameters(row), None
        else:
            source, model_id = logged
            tags["architecture"] = str(self.settings.model_architecture)
        self.client.create_model_version(name, source=source, run_id=self.run_id, tags=tags, model_id=model_id)

    def _log_parameters(self, row: ModelVersionRow) -> str:
        """Log ``row``'s safetensors parameters as a run artifact; returns its folder's URI."""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{row.model_name}-v{row.version}.safetensors"
            path.write_bytes(bytes(row.parameters))
            self.client.log_artifact(self.run_id, str(path), artifact_path=f"versions/v{row.version}")
        run = self.client.get_run(self.run_id)
        return f"{run.info.artifact_uri}/versions/v{row.version}"

    def _log_model(self, row: ModelVersionRow) -> tuple[str, str] | None:
        """Log ``row`` as an MLflow pytorch model of this run; its URI and id, None when the parameters do not fit.

        Saved with ``torch.export`` (``pt2``: no pickle, and no fedstream code needed to load it), with a
        signature and an input example of the architecture's input shape, batch dimension free.
        """
        import mlflow.pytorch
        import torch

        from fedstream.export import build_module, example_input

        architecture = str(self.settings.model_architecture)
        try:
            module = build_module(architecture, bytes(row.parameters))
        except ValueError:
            # Retrying cannot help (the background worker would retry forever): register the parameters instead.
            logger.exception(
                "MLflow: version %d does not fit architecture %r; registering its parameters only",
                row.version,
                architecture,
            )
            return None
        example = example_input(architecture)
        with torch.no_grad():
            output = module(torch.from_numpy(example)).numpy()
        logged = self.client.create_logged_model(
            self.experiment_id,
            name=f"{row.model_name}-v{row.version}",
            source_run_id=self.run_id,
            tags={**lineage_tags(row), "architecture": architecture},
        )
        info = mlflow.pytorch.log_model(
            module,
            model_id=logged.model_id,
            run_id=self.run_id,
            step=row.version,
            signature=_tensor_signature(example, output),
            input_example=example,
            serialization_format="pt2",
            # Listed, not inferred: inference loads the model in a subprocess; a local build tag (+cu132) is no pin.
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        )
        return info.model_uri, logged.model_id

    def close(self) -> None:
        """End the run."""
        self.client.set_terminated(self.run_id)


class BackgroundRecorder:
    """Feeds an :class:`MlflowRecorder` from a queue in its own thread; :meth:`submit` never waits on MLflow.

    ``make_recorder`` is called in the thread (creating the run talks to MLflow too), and again after a failure.
    Work items (a batch's metrics, one registration) are tried in order; one that fails is retried every
    ``retry_seconds`` until it succeeds or :meth:`close` gives up at its deadline (logging what stayed
    unrecorded; the next start backfills it).
    """

    def __init__(
        self,
        make_recorder: Callable[[], MlflowRecorder],
        *,
        register_every: int,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self._make_recorder = make_recorder
        self._register_every = register_every
        self._retry_seconds = retry_seconds
        self._queue: queue.Queue[Callable[[MlflowRecorder], None] | None] = queue.Queue()
        self._recorder: MlflowRecorder | None = None
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = threading.Event()
        self._pending = 0
        self._count_lock = threading.Lock()
        self._last_refusal: BudgetCheck | None = None
        self._thread = threading.Thread(target=self._run, name="fedstream-mlflow", daemon=True)
        self._thread.start()

    def submit(self, rows: Sequence[ModelVersionRow]) -> None:
        """Queue ``rows`` for logging (and registration where due); returns at once."""
        kept = [_without_parameters(row) for row in rows]
        self._put(lambda recorder: recorder.record(kept, register=False))
        for row in rows:
            if registered_version(row.version, self._register_every):
                self._put(lambda recorder, row=row: recorder.register(row))  # type: ignore[misc]

    def backfill(self, newer_than: Callable[[int | None, int | None], Iterable[ModelVersionRow]]) -> None:
        """Queue the versions MLflow lacks after a crash: ``newer_than(newest_logged, newest_registered)``."""

        def work(recorder: MlflowRecorder) -> None:
            logged, registered = recorder.newest_logged_version(), recorder.newest_registered_version()
            rows = sorted(newer_than(logged, registered), key=lambda row: row.version)
            missing_steps = [row for row in rows if logged is None or row.version > logged]
            if missing_steps:
                recorder.record([_without_parameters(row) for row in missing_steps], register=False)
            for row in rows:
                if recorder.registers(row.version) and (registered is None or row.version > registered):
                    recorder.register(row)
            if rows:
                logger.info("MLflow caught up with %d versions it had not recorded", len(rows))

        self._put(work)

    def record_budget_refusal(self, check: BudgetCheck) -> None:
        """Tag the run (once per refusal) with why no further version is made."""
        if check == self._last_refusal:
            return
        self._last_refusal = check
        self._put(lambda recorder: recorder.tag_budget_refusal(check))

    def wait_until_idle(self, timeout_seconds: float) -> bool:
        """Wait until everything submitted so far is recorded; False if ``timeout_seconds`` passed first."""
        return self._idle.wait(timeout_seconds)

    @property
    def backlog(self) -> int:
        """Work items submitted and not yet recorded."""
        return self._pending

    def close(self, timeout_seconds: float = 60.0) -> None:
        """Drain the queue (up to ``timeout_seconds``), end the run and stop the thread."""
        if not self._idle.wait(timeout_seconds):
            logger.warning("MLflow: %d items left unrecorded at stop; the next start backfills them", self._pending)
        self._stopping.set()
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _put(self, work: Callable[[MlflowRecorder], None]) -> None:
        with self._count_lock:
            self._pending += 1
            self._idle.clear()
        self._queue.put(work)

    def _run(self) -> None:
        while True:
            work = self._queue.get()
            if work is None:
                break
            while not self._attempt(work):
                if self._stopping.wait(self._retry_seconds):
                    return
            with self._count_lock:
                self._pending -= 1
                if self._pending == 0:
                    self._idle.set()
        if self._recorder is not None:
            try:
                self._recorder.close()
            except Exception:
                logger.exception("MLflow: ending the run failed")

    def _attempt(self, work: Callable[[MlflowRecorder], None]) -> bool:
        try:
            if self._recorder is None:
                self._recorder = self._make_recorder()
            work(self._recorder)
            return True
        except Exception:
            logger.exception("MLflow: recording failed; retrying in %.0fs", self._retry_seconds)
            return False


def registered_version(version: int, register_every: int) -> bool:
    """Whether ``version`` goes to the model registry: every ``register_every``-th (never when 0)."""
    return bool(register_every) and version % register_every == 0


def lineage_tags(row: ModelVersionRow) -> dict[str, str]:
    """Tags of ``row``'s registered model version: where it comes from, and its privacy when it has any."""
    tags = {
        "global_version": str(row.version),
        "parameter_hash": row.parameter_hash,
        "fedstream_version": _fedstream_version(),
    }
    if row.epsilon is not None:
        tags["epsilon"] = repr(row.epsilon)
        tags["epsilon_assumption"] = row.epsilon_assumption or ""
    return tags


def _fedstream_version() -> str:
    try:
        return importlib.metadata.version("fedstream")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "unknown"


def _tensor_signature(example: np.ndarray, output: np.ndarray) -> Any:
    """An MLflow signature of one float32 tensor in and one out, with the batch dimension free (-1)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *example.shape[1:]))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *output.shape[1:]))]),
    )


def _without_parameters(row: ModelVersionRow) -> ModelVersionRow:
    return row.model_copy(update={"parameters": b"", "optimizer_state": b""})


def _as_float(flag: bool | None) -> float | None:
    return None if flag is None else float(flag)
