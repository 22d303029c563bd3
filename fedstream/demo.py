"""``fedstream demo``: a local end-to-end federated run on the UCI HAPT activity data, or on your own table.

One simulated device per training subject trains a small CNN on its own windows and publishes updates to
Kafka; the streaming job (a separate process, as in production) validates them, buffers them into Delta
and aggregates asynchronously; held-out subjects, never seen in training, measure each global version.

With a :class:`TableSource` the subjects are those of a Parquet/CSV table: its rows as samples for an MLP,
or windows cut from its rows in order for the CNN; the summary then also sets the final global model against
each training client's model trained alone, on every held-out subject.

With personalization (``--personalize``) each device keeps its classifier head to itself and/or fine-tunes
the final global model on its own training data; the summary then gives each device's accuracy on its own
validation windows with the global model and with its personalized one. The job's version 0 is then the
model without the head (the global model is the shared layers only), and the global model's accuracy, on
held-out subjects and on each device, is that of the shared layers with the mean of the devices' heads.

With ``--mode fedavg`` the same job runs synchronous FedAvg rounds (:func:`synchronous_aggregation`): each
version opens a round whose cohort the devices draw themselves (``schemas.cohorts``); a device trains only
when drawn and waits for the next version otherwise, and a device still busy when its round closed does not
send. The summary then sets the wall time to the same held-out accuracy against the newest FedBuff run
(and a FedBuff run's summary against the newest FedAvg run) of the same data, seed and length.
"""

from __future__ import annotations

import csv
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedstream.demo_data import DemoData, HeldOutEvaluator, TableSource, hapt_data, load_table_data
from fedstream.local_only import LocalOnlyComparison, LocalTrainingSettings, local_only_comparison
from fedstream.mode_comparison import (
    AccuracyPoint,
    compare_runs,
    newest_comparable_run,
    read_points,
    read_run,
    write_run,
)

if TYPE_CHECKING:
    from producers.client import FederatedClient
    from producers.fleet import FleetReport
    from producers.personalization import ClientPersonalization

DEFAULT_HELD_OUT = (5, 10, 15, 20, 25, 30)
DEFAULT_AGGREGATION: dict[str, Any] = {
    "mode": "fedbuff",
    "buffer_size": 10,
    "max_wait_seconds": 10.0,
    "staleness_function": "polynomial",
    "staleness_exponent": 0.5,
    "max_staleness": 20,
    "server_optimizer": "sgd",
    "server_learning_rate": 1.0,
}

ROUND_OVERSELECTION = 1.3
"""Synchronous rounds draw this many times the round's size in expectation, so stragglers do not hold it up."""
ROUND_DEADLINE_SECONDS = 10.0
"""A synchronous round closes at this wait after its first update even if fewer than K arrived."""

DEMO_FINE_TUNING_EPOCHS = 2
"""Epochs a device fine-tunes the final global model on its own training data with ``--personalize``."""


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs; the defaults finish in about five minutes on two cores."""

    duration_seconds: float = 180.0
    held_out_subjects: tuple[int, ...] = DEFAULT_HELD_OUT
    aggregation: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_AGGREGATION))
    local_epochs: int = 1
    local_learning_rate: float = 0.02
    proximal_mu: float = 0.0
    device_delay_median_seconds: float = 1.0
    seed: int = 0
    model_name: str = "har-cnn"
    progress_every_seconds: float = 5.0
    table: TableSource | None = None
    """Train on this table's subjects instead of UCI HAPT's."""
    local_only_clients: int = 8
    """With a table: how many training clients (a seeded sample) also train alone for the comparison."""
    personal_prefixes: tuple[str, ...] = ()
    """Parameter-name prefixes each device keeps to itself (``--personalize``: the classifier head)."""
    fine_tuning_epochs: int = 0
    """Epochs each device fine-tunes the final global model on its own training data (``--personalize``)."""

    @property
    def personalized(self) -> bool:
        """Whether devices personalize, so that the summary compares global and personalized per device."""
        return bool(self.personal_prefixes) or self.fine_tuning_epochs > 0


HAPT_SUBJECTS = 30


def private_aggregation(
    settings: DemoSettings, noise_multiplier: float, clip_norm: float, population: int | None = None
) -> dict[str, Any]:
    """The demo's aggregation with client-level DP: uniform weights, clipping at ``clip_norm``, Gaussian noise.

    The population is the demo's training devices (``population``; by default HAPT's). The demo's devices
    publish whenever they finish, not by a random check-in, so epsilon claims no sampling amplification
    (``dp_participation="arbitrary"``); the population only bounds the buffer (a version takes at most one
    update per device).
    """
    return {
        **settings.aggregation,
        "weight_by_sample_count": False,
        "dp_noise_multiplier": noise_multiplier,
        "dp_clip_norm": clip_norm,
        "dp_population": HAPT_SUBJECTS - len(settings.held_out_subjects) if population is None else population,
    }


def synchronous_aggregation(settings: DemoSettings, devices: int) -> dict[str, Any]:
    """The demo's synchronous FedAvg rounds: K updates per round, from a cohort drawn anew for every version.

    Each device is drawn with probability ``1.3 K / devices`` (at most 1), so a round expects 30% more
    devices than it takes, as production FL systems over-select; a round closes at its K-th update or
    :data:`ROUND_DEADLINE_SECONDS` after its first. FedAvg has no server optimizer and takes no stale update.
    """
    buffer_size = int(settings.aggregation.get("buffer_size", DEFAULT_AGGREGATION["buffer_size"]))
    return {
        "mode": "fedavg",
        "buffer_size": buffer_size,
        "max_wait_seconds": ROUND_DEADLINE_SECONDS,
        "cohort_fraction": min(1.0, ROUND_OVERSELECTION * buffer_size / devices),
        "server_optimizer": "sgd",
        "server_learning_rate": 1.0,
    }


def is_synchronous(aggregation: dict[str, Any]) -> bool:
    """Whether the demo's aggregation runs synchronous rounds (its strategy says so)."""
    from aggregator.strategies.registry import strategy_class

    return strategy_class(str(aggregation.get("mode", "fedbuff"))).synchronous


@dataclass
class _Point:
    elapsed: float
    version: int
    accepted: int
    accuracy: float
    macro_f1: float


def run_demo(settings: DemoSettings, data: DemoData | None = None) -> int:
    """Run the demo; return a process exit code.

    ``data`` is the training and held-out data when already loaded (the CLI loads a table first, to refuse a
    bad one before anything starts); otherwise it is loaded here from ``settings``.
    """
    import torch

    from devstack.local_stack import stack_up
    from devstack.topics import reset_topics
    from fedstream.job_process import JobOptions, JobProcess
    from producers.client import FederatedClient
    from producers.fleet import DeviceSpeeds, SimulatedFleet
    from producers.identity import ClientIdentity
    from producers.models import model_weights
    from producers.personalization import shared_model_weights
    from producers.training import LocalTrainingConfig
    from producers.transport import GlobalModelSubscriber, UpdatePublisher
    from schemas.kafka_settings import KafkaSettings
    from schemas.paths import local_job_key_files, state_dir
    from schemas.tensors import encode_tensors
    from streaming_jobs.signing_key import SIGNING_KEY_FILE_VARIABLE, SIGNING_KEY_VARIABLE, local_job_key
    from streaming_jobs.tracking import tracking_uri

    torch.set_num_threads(1)  # the other core is the streaming job's
    run_dir = state_dir() / "demo" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True)
    _say(f"fedstream demo: run folder {run_dir}")
    status = stack_up()
    kafka = KafkaSettings(bootstrap_servers=status.broker.bootstrap_servers)
    reset_topics(kafka)
    _say("topics fl.updates and fl.models reset for a clean run")

    if data is None:
        data = (
            hapt_data(settings.held_out_subjects, settings.model_name)
            if settings.table is None
            else load_table_data(settings.table, settings.seed)
        )
    model_name = data.model_name
    synchronous = is_synchronous(settings.aggregation)
    description = _run_description(settings, data)
    write_run(run_dir, description)
    _say(
        f"{data.description}: {len(data.training)} training devices (one per subject), "
        f"{len(data.held_out)} subjects held out ({', '.join(data.held_out)})"
    )
    initial = run_dir / "initial-model.safetensors"
    initial_model = data.build(settings.seed)
    if settings.personal_prefixes:  # the global model is the shared layers: updates carry those only
        initial.write_bytes(encode_tensors(shared_model_weights(initial_model, settings.personal_prefixes)))
    else:
        initial.write_bytes(encode_tensors(model_weights(initial_model)))
    identities = {client_id: ClientIdentity.generate(client_id) for client_id in data.training}
    faulty_device = ClientIdentity.generate("faulty-device")
    enrolled = run_dir / "enrolled-keys"
    enrolled.mkdir()
    for identity in [*identities.values(), faulty_device]:
        (enrolled / f"{identity.client_id}.pub").write_text(identity.public_key.hex() + "\n")
    _say(f"{len(identities) + 1} device key pairs made; the job enrols their public keys from {enrolled}")
    job_key = local_job_key()  # made by the stack on first use; devices trust only what it signs
    job_key_file, job_public_file = local_job_key_files()
    _say(f"the job signs every global version with {job_key_file}; devices trust only {job_public_file}")

    job = JobProcess(
        run_dir,
        JobOptions(model_name, initial, settings.aggregation, enrolled, experiment="fedstream-demo"),
    )
    # The key the devices trust, even where the shell configures another one for jobs.
    job.start({SIGNING_KEY_FILE_VARIABLE: str(job_key_file), SIGNING_KEY_VARIABLE: ""})
    stop = threading.Event()
    points: list[_Point] = []
    reports: list[FleetReport] = []
    clients: list[FederatedClient] = []
    final: Any = None
    try:
        evaluator_subscriber = GlobalModelSubscriber(kafka, model_name, job_key.public_key)
        _say("waiting for the streaming job to publish version 0 (Spark start-up takes ~30-60 s) ...")
        first = _wait_for_version_zero(evaluator_subscriber, job)
        training = LocalTrainingConfig(
            epochs=settings.local_epochs,
            learning_rate=settings.local_learning_rate,
            proximal_mu=settings.proximal_mu,
            seed=settings.seed,
        )
        fine_tuning = (
            LocalTrainingConfig(
                epochs=settings.fine_tuning_epochs, learning_rate=settings.local_learning_rate, seed=settings.seed
            )
            if settings.fine_tuning_epochs > 0
            else None
        )
        clients = [
            FederatedClient(
                client_id=client_id,
                model_name=model_name,
                model=data.build(settings.seed),
                data=local,
                training=training,
                identity=identities[client_id],
                personal_prefixes=settings.personal_prefixes,
                fine_tuning=fine_tuning,
            )
            for client_id, local in data.training.items()
        ]
        evaluator: Any = HeldOutEvaluator(data.build(settings.seed), data.held_out)
        if settings.personal_prefixes:
            evaluator = _WithMeanPersonalLayers(evaluator, clients)
        fleet = SimulatedFleet(
            clients,
            GlobalModelSubscriber(kafka, model_name, job_key.public_key),
            UpdatePublisher(kafka),
            DeviceSpeeds(median_seconds=settings.device_delay_median_seconds, seed=settings.seed),
            synchronous=synchronous,
        )
        started = time.monotonic()
        baseline = evaluator.evaluate(first.parameters)
        points.append(_Point(0.0, 0, 0, baseline.accuracy, baseline.macro_f1))
        _say(f"version 0: held-out accuracy {baseline.accuracy:.1%} (an untrained model guesses)")
        fleet_thread = threading.Thread(
            target=lambda: reports.append(fleet.run(settings.duration_seconds, stop)), daemon=True
        )
        fleet_thread.start()
        injected = False
        while fleet_thread.is_alive():
            fleet_thread.join(settings.progress_every_seconds)
            elapsed = time.monotonic() - started
            if not injected and elapsed > settings.duration_seconds / 4:
                injected = _inject_bad_updates(kafka, model_name, evaluator_subscriber, faulty_device)
            _progress(points, evaluator, evaluator_subscriber, job, elapsed)
        _say("devices stopped; letting the job aggregate what is still buffered ...")
        _drain(job, settings)
        _progress(points, evaluator, evaluator_subscriber, job, time.monotonic() - started)
        final = evaluator_subscriber.newest()
        if final.header.version != points[-1].version:  # the summary's table ends on the version compared below
            _progress(points, evaluator, evaluator_subscriber, job, time.monotonic() - started)
    except KeyboardInterrupt:
        _say("interrupted: stopping devices and the job")
        stop.set()
    finally:
        stop.set()
        job.stop(60)
    comparison = None
    personalization = None
    if settings.personalized and final is not None and clients:
        personalization = _personalization(settings, clients, final)
    if settings.table is not None and final is not None:
        rounds = reports[0].per_client if reports else {}
        alone = LocalTrainingSettings(settings.local_epochs, settings.local_learning_rate, settings.seed)
        comparison = local_only_comparison(
            data,
            _global_weights(final.parameters, clients) if settings.personal_prefixes else final.parameters,
            final.header.version,
            rounds,
            training=alone,
            max_clients=settings.local_only_clients,
            say=_say,
        )
        comparison.write_csv(run_dir / "local-only.csv")
    modes = _mode_comparison(run_dir, description, points, reports[0] if reports else None, synchronous)
    _summary(settings, data, job, points, tracking_uri(), comparison, personalization, modes)
    return 0


def _run_description(settings: DemoSettings, data: DemoData) -> dict[str, Any]:
    """What ``run.json`` records: the mode and what a run must share with another to be compared."""
    return {
        "mode": str(settings.aggregation.get("mode", "fedbuff")),
        "data": data.description,
        "held_out": list(data.held_out),
        "seed": settings.seed,
        "duration_seconds": settings.duration_seconds,
        "personalized": settings.personalized,
    }


def _mode_comparison(
    run_dir: Path, description: dict[str, Any], points: list[_Point], report: FleetReport | None, synchronous: bool
) -> list[str]:
    """The summary's lines on modes: how rounds went, and wall time to the same accuracy as the other mode's run."""
    lines = []
    if synchronous and report is not None:
        lines.append(
            f"rounds       : devices sat out {report.rounds_sat_out} rounds they were not drawn for; "
            f"{report.late_unsent} updates were not sent because their round had closed"
        )
    other_run = newest_comparable_run(run_dir.parent, run_dir, description)
    if other_run is None:
        other = "fedbuff" if synchronous else "fedavg"
        lines.append(f"compare      : run `fedstream demo --mode {other}` with the same options to compare wall time")
        return lines
    other_mode = str(read_run(other_run).get("mode"))
    these = [AccuracyPoint(point.elapsed, point.accuracy) for point in points]
    found = compare_runs(description["mode"], these, other_mode, read_points(other_run), other_run)
    lines.append(f"compare      : {found.line() if found is not None else 'a run without accuracy points'}")
    return lines


def _global_weights(shared: Any, clients: list[FederatedClient]) -> Any:
    """A global version's shared layers with the mean of the devices' personal layers: a whole model."""
    from producers.personalization import average_weights, merge_weights

    return merge_weights(shared, average_weights([client.personal_weights for client in clients]))


class _WithMeanPersonalLayers:
    """Evaluates global versions, which lack the devices' personal layers, with the mean of those layers.

    A held-out subject has no layers of its own; the devices' mean is the nearest thing it could get.
    """

    def __init__(self, evaluator: HeldOutEvaluator, clients: list[FederatedClient]) -> None:
        self.evaluator = evaluator
        self.clients = clients

    def evaluate(self, parameters: Any) -> Any:
        """Loss, accuracy and macro-F1 on every held-out sample of ``parameters`` completed with the mean head."""
        return self.evaluator.evaluate(_global_weights(parameters, self.clients))


def _personalization(settings: DemoSettings, clients: list[FederatedClient], final: Any) -> list[ClientPersonalization]:
    """Per device with validation windows: the final global model against its personalized one, on those windows."""
    from producers.personalization import average_weights

    what = []
    if settings.personal_prefixes:
        what.append("keeps its own " + ", ".join(f"{prefix}*" for prefix in settings.personal_prefixes))
    if settings.fine_tuning_epochs:
        what.append(f"fine-tunes version {final.header.version} for {settings.fine_tuning_epochs} epoch(s)")
    _say(f"personalizing: each device {' and '.join(what)}; evaluating on its own validation windows ...")
    mean_personal = (
        average_weights([client.personal_weights for client in clients]) if settings.personal_prefixes else None
    )
    return [
        client.evaluate_personalization(final, global_personal=mean_personal)
        for client in clients
        if len(client.data.validation_labels)
    ]


def _wait_for_version_zero(subscriber: Any, job: Any) -> Any:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if not job.running():
            raise SystemExit(f"the streaming job exited; see {job.log_path}")
        if subscriber.poll(1.0) is not None:
            return subscriber.newest()
    raise SystemExit(f"no version 0 after 300 s; see {job.log_path}")


def _inject_bad_updates(kafka: Any, model_name: str, subscriber: Any, device: Any) -> bool:
    from fedstream.bad_updates import bad_update_messages
    from producers.identity import ClientIdentity
    from producers.transport import UpdatePublisher

    newest = subscriber.newest()
    publisher = UpdatePublisher(kafka)
    impostor = ClientIdentity.generate("impostor")
    messages = bad_update_messages(model_name, newest.parameters, newest.header.version, device, impostor)
    for _, client_id, value in messages:
        publisher.publish(client_id, value)
    publisher.close()
    _say("a faulty device sent: " + ", ".join(label for label, _, _ in messages) + " (watch 'rejected')")
    _publish_forged_version(kafka, newest, impostor)
    return True


def _publish_forged_version(kafka: Any, newest: Any, impostor: Any) -> None:
    """Put a "version N+1000" on ``fl.models`` signed by a key that is not the job's: every device ignores it."""
    from kafka import KafkaProducer

    from schemas.messages import ModelHeader
    from schemas.topics import MODELS_TOPIC
    from schemas.wire import encode_model, tensors_payload

    payload, payload_hash = tensors_payload(newest.parameters)
    header = ModelHeader(
        model_name=newest.header.model_name,
        version=newest.header.version + 1000,
        parent_version=newest.header.version,
        parent_parameter_hash=newest.header.parameter_hash,
        parameter_hash=newest.header.parameter_hash,
        payload_sha256=payload_hash,
        created_at=datetime.now(UTC),
    )
    producer = KafkaProducer(**kafka.producer_options())
    try:
        producer.send(MODELS_TOPIC, key=header.model_name.encode(), value=encode_model(header, payload, impostor.sign))
        producer.flush(timeout=30)
    finally:
        producer.close()
    _say(f"an impostor published a 'version {header.version}' on {MODELS_TOPIC}, signed with its own key: ignored")


def _progress(points: list[_Point], evaluator: Any, subscriber: Any, job: Any, elapsed: float) -> None:
    version = subscriber.poll(0.1)
    status = job.status()
    if version is not None and version != points[-1].version:
        result = evaluator.evaluate(subscriber.newest().parameters)
        points.append(_Point(elapsed, version, int(status.get("accepted", 0)), result.accuracy, result.macro_f1))
    last = points[-1]
    _say(
        f"[{elapsed:5.0f}s] version {last.version:4d} | updates accepted {status.get('accepted', 0):5d}, "
        f"rejected {status.get('rejected', 0):2d}, buffered {status.get('pending', 0):2d} | "
        f"held-out accuracy {last.accuracy:6.1%} (v{last.version})"
        + (f" | ε {status['epsilon']:.2f}" if status.get("epsilon") is not None else "")
    )


def _drain(job: Any, settings: DemoSettings) -> None:
    deadline = time.monotonic() + float(settings.aggregation.get("max_wait_seconds") or 10.0) + 30
    while time.monotonic() < deadline:
        status = job.status()
        if status and status.get("pending", 1) == 0:
            return
        time.sleep(1.0)


def _summary(
    settings: DemoSettings,
    data: DemoData,
    job: Any,
    points: list[_Point],
    mlflow_uri: str,
    comparison: LocalOnlyComparison | None,
    personalization: list[ClientPersonalization] | None = None,
    modes: list[str] | None = None,
) -> None:
    run_dir = job.folder
    status = job.status()
    with (run_dir / "accuracy.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["elapsed_seconds", "version", "accepted_updates", "held_out_accuracy", "held_out_macro_f1"])
        for point in points:
            writer.writerow([f"{point.elapsed:.1f}", point.version, point.accepted, point.accuracy, point.macro_f1])
    plot = _plot(points, run_dir / "accuracy.png", data)
    report = _report(data.model_name, run_dir)
    aggregation = settings.aggregation
    print()
    print("=" * 78)
    if is_synchronous(aggregation):
        print(
            f"fedstream demo: {aggregation['mode']} rounds of K={aggregation['buffer_size']}, cohort fraction "
            f"{aggregation.get('cohort_fraction') or 1:.2f}, round deadline {aggregation.get('max_wait_seconds')} s"
        )
    else:
        print(
            f"fedstream demo: {aggregation['mode']} K={aggregation['buffer_size']}, "
            f"staleness {aggregation['staleness_function']}, server {aggregation['server_optimizer']}"
        )
    print(f"{'elapsed':>8} {'version':>8} {'accepted':>9} {'held-out acc':>13} {'macro-F1':>9}")
    shown = points if len(points) <= 12 else [points[i * (len(points) - 1) // 11] for i in range(12)]
    for point in shown:
        print(
            f"{point.elapsed:7.0f}s {point.version:8d} {point.accepted:9d} {point.accuracy:13.1%} {point.macro_f1:9.3f}"
        )
    if points:
        first, last = points[0], points[-1]
        print(f"held-out accuracy: {first.accuracy:.1%} at version 0 -> {last.accuracy:.1%} at version {last.version}")
    print(
        f"updates accepted {status.get('accepted', 0)}, rejected {status.get('rejected', 0)}: "
        + ", ".join(f"{reason} {count}" for reason, count in sorted(status.get("rejected_by_reason", {}).items()))
    )
    if aggregation.get("dp_noise_multiplier") is not None:
        epsilon = status.get("epsilon")
        print(
            f"privacy      : client-level DP, sigma {aggregation['dp_noise_multiplier']:g}, clip "
            f"{aggregation['dp_clip_norm']:g}: ε = {'-' if epsilon is None else f'{epsilon:.2f}'} "
            f"(δ = {aggregation.get('dp_delta', 1e-5):g}) after version {points[-1].version if points else 0}"
        )
    else:
        print("privacy      : no differential privacy (rerun with --dp-noise-multiplier 1.0 for ε)")
    if comparison is not None:
        for line in comparison.lines():
            print(line)
    if personalization:
        for line in _personalization_lines(settings, personalization):
            print(line)
        _write_personalization(personalization, run_dir / "personalization.csv")
    for line in modes or []:
        print(line)
    print(f"Delta tables : {run_dir / 'tables'} (updates, rejected_updates, model_versions)")
    print(f"MLflow       : {mlflow_uri} (experiment fedstream-demo)")
    print(f"plot, csv    : {plot or 'matplotlib not installed'}, {run_dir / 'accuracy.csv'}")
    if comparison is not None:
        print(f"local-only   : {run_dir / 'local-only.csv'} (every held-out subject × every model)")
    if personalization:
        print(f"personalized : {run_dir / 'personalization.csv'} (every device: global and personalized model)")
    print(f"report       : {report.as_uri() if report else 'not written (see the message above)'}")
    print(f"job log      : {job.log_path}")
    print("=" * 78)


PERSONALIZATION_ROWS_SHOWN = 30
"""Devices the summary lists one by one; ``personalization.csv`` has them all."""


def _personalization_lines(settings: DemoSettings, results: list[ClientPersonalization]) -> list[str]:
    """The summary's per-device comparison: global and personalized accuracy on each device's own validation data."""
    how = []
    if settings.personal_prefixes:
        how.append("own " + ", ".join(f"{prefix}*" for prefix in settings.personal_prefixes) + " layers")
    if settings.fine_tuning_epochs:
        how.append(f"fine-tuned {settings.fine_tuning_epochs} epoch(s) on own training data")
    lines = [
        f"personalized : {', '.join(how)}",
        "               accuracy on each device's own validation windows"
        + (" (global: shared + the devices' mean personal layers)" if settings.personal_prefixes else ""),
    ]
    mean_label = f"mean of {len(results)}"
    width = max(len(mean_label), *(len(result.client_id) for result in results))
    lines.append(f"  {'device':<{width}} {'windows':>8} {'global':>8} {'personalized':>13}")
    for result in results[:PERSONALIZATION_ROWS_SHOWN]:
        lines.append(
            f"  {result.client_id:<{width}} {result.global_evaluation.count:8d} "
            f"{result.global_evaluation.accuracy:8.1%} {result.personalized_evaluation.accuracy:13.1%}"
        )
    if len(results) > PERSONALIZATION_ROWS_SHOWN:
        lines.append(f"  ... {len(results) - PERSONALIZATION_ROWS_SHOWN} more devices in personalization.csv")
    global_mean = sum(result.global_evaluation.accuracy for result in results) / len(results)
    personal_mean = sum(result.personalized_evaluation.accuracy for result in results) / len(results)
    lines.append(
        f"  {mean_label:<{width}} {'':>8} {global_mean:8.1%} {personal_mean:13.1%}"
        f"   ({100 * (personal_mean - global_mean):+.1f} points)"
    )
    return lines


def _write_personalization(results: list[ClientPersonalization], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "client_id",
                "validation_windows",
                "global_accuracy",
                "personalized_accuracy",
                "global_macro_f1",
                "personalized_macro_f1",
                "global_loss",
                "personalized_loss",
            ]
        )
        for result in results:
            global_, personal = result.global_evaluation, result.personalized_evaluation
            writer.writerow(
                [
                    result.client_id,
                    global_.count,
                    global_.accuracy,
                    personal.accuracy,
                    global_.macro_f1,
                    personal.macro_f1,
                    global_.loss,
                    personal.loss,
                ]
            )


def _report(model_name: str, run_dir: Path) -> Path | None:
    """``fedstream report`` of the run, written beside its tables; None (and why, said) if it could not be."""
    _say("writing the HTML report from the Delta tables (Spark starts once more, ~20 s) ...")
    try:
        from fedstream.report import render_html
        from fedstream.report.read import read_report_data
        from streaming_jobs.spark_session import get_spark
        from streaming_jobs.tables import TableLocations

        spark = get_spark("fedstream-demo-report")
        try:
            report_data = read_report_data(spark, TableLocations(str(run_dir / "tables")), model_name)
        finally:
            spark.stop()
    except Exception as error:  # the run's results stand without the report
        _say(f"the report could not be written: {error}")
        return None
    path = run_dir / "report.html"
    path.write_text(render_html(report_data), encoding="utf-8")
    return path


def _plot(points: list[_Point], path: Path, data: DemoData) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot([p.elapsed for p in points], [100 * p.accuracy for p in points], marker="o", markersize=3)
    axis.set_xlabel("seconds since devices started")
    axis.set_ylabel("held-out accuracy (%)")
    axis.set_title(f"fedstream on {data.title}: {len(data.held_out)} unseen subjects")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _say(message: str) -> None:
    print(message, flush=True)
