"""A single-node Apache Kafka broker in KRaft mode, run from Maven Central jars.

The broker runs detached (its own session) so it outlives the command that started it; its pid, config
and logs live in ``<state>/kafka``. ``up`` is idempotent, ``down`` leaves no process behind, ``status``
checks the pid and that the port answers.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from schemas.paths import state_dir
from streaming_jobs.jars import resolve

BROKER_HEAP = "-Xmx512m"
BROKER_POM = "kafka-broker.pom.xml"
"""The broker's jars (Kafka, log4j), beside this module."""


class BrokerError(RuntimeError):
    """The local broker could not be formatted, started or stopped."""


@dataclass(frozen=True)
class BrokerStatus:
    """What is true of the local broker right now."""

    running: bool
    pid: int | None
    answering: bool
    bootstrap_servers: str
    log_file: Path

    def describe(self) -> str:
        """One line for people."""
        if self.running and self.answering:
            return f"kafka: running (pid {self.pid}) on {self.bootstrap_servers}"
        if self.running:
            return f"kafka: process {self.pid} alive but {self.bootstrap_servers} not answering; see {self.log_file}"
        return "kafka: stopped"


class LocalKafkaBroker:
    """Start, stop and inspect the local broker; ports from ``FEDSTREAM_KAFKA_PORT`` (default 9092)."""

    def __init__(self, home: Path | None = None, port: int | None = None) -> None:
        self.home = (home or state_dir()) / "kafka"
        self.port = port or int(os.environ.get("FEDSTREAM_KAFKA_PORT", "9092"))
        self.controller_port = self.port + 1
        self.bootstrap_servers = f"localhost:{self.port}"
        self.pid_file = self.home / "broker.pid"
        self.log_file = self.home / "broker.log"
        self.config_file = self.home / "server.properties"
        self.data_dir = self.home / "data"

    def status(self) -> BrokerStatus:
        """Whether the broker process is alive and its port accepts connections."""
        pid = self._live_pid()
        return BrokerStatus(
            running=pid is not None,
            pid=pid,
            answering=pid is not None and _port_open(self.port),
            bootstrap_servers=self.bootstrap_servers,
            log_file=self.log_file,
        )

    def up(self, timeout_seconds: float = 90.0) -> BrokerStatus:
        """Start the broker unless it already runs, and wait until it answers."""
        current = self.status()
        if current.running and current.answering:
            return current
        if current.running:
            return self._wait_until_answering(current.pid, timeout_seconds)
        if _port_open(self.port):
            raise BrokerError(f"port {self.port} is taken by another process; set FEDSTREAM_KAFKA_PORT")
        java = shutil.which("java")
        if java is None:
            raise BrokerError("Java 17+ is needed to run the local Kafka broker")
        classpath = ":".join(str(jar.path) for jar in resolve(resources.files("devstack") / BROKER_POM))
        self._write_config()
        if not (self.data_dir / "meta.properties").exists():
            self._format_storage(java, classpath)
        print(f"fedstream: starting Kafka broker on {self.bootstrap_servers} ...", flush=True)
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                [
                    java,
                    BROKER_HEAP,
                    "-XX:+UseG1GC",
                    f"-Dlog4j2.configurationFile={self._log_config()}",
                    "-cp",
                    classpath,
                    "kafka.Kafka",
                    str(self.config_file),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid_file.write_text(str(process.pid))
        return self._wait_until_answering(process.pid, timeout_seconds)

    def down(self, timeout_seconds: float = 30.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after the timeout) and forget its pid."""
        pid = self._live_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_seconds
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
                while _alive(pid):
                    time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)

    def _wait_until_answering(self, pid: int | None, timeout_seconds: float) -> BrokerStatus:
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            if pid is None or not _alive(pid):
                raise BrokerError(f"the broker exited during start-up; see {self.log_file}")
            if _port_open(self.port):
                return self.status()
            time.sleep(0.5)
        raise BrokerError(f"the broker did not answer on {self.bootstrap_servers} in {timeout_seconds:.0f}s")

    def _live_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def _write_config(self) -> None:
        # Message limits stay Kafka's defaults, as on a managed cluster; a larger configured limit is set per
        # topic (schemas.topics.topic_configs).
        self.home.mkdir(parents=True, exist_ok=True)
        settings = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@localhost:{self.controller_port}",
            "listeners": f"PLAINTEXT://localhost:{self.port},CONTROLLER://localhost:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://localhost:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "168",
        }
        self.config_file.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))

    def _format_storage(self, java: str, classpath: str) -> None:
        self._run_storage_format(java, classpath)

    def _run_storage_format(
        self, java: str, classpath: str, extra_arguments: Sequence[str] = (), secrets: Sequence[str] = ()
    ) -> None:
        """Format the log directory for a new cluster; ``secrets`` are masked in the error message."""
        completed = subprocess.run(
            [
                java,
                f"-Dlog4j2.configurationFile={self._log_config()}",
                "-cp",
                classpath,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                _new_cluster_id(),
                "-c",
                str(self.config_file),
                *extra_arguments,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if completed.returncode != 0:
            output = f"{completed.stdout}{completed.stderr}"
            for secret in secrets:
                output = output.replace(secret, "***")
            raise BrokerError(f"formatting Kafka storage in {self.data_dir} failed: {output}")

    def _log_config(self) -> Path:
        path = self.home / "log4j2.properties"
        if not path.exists():
            path.write_text(
                "rootLogger.level = WARN\n"
                "rootLogger.appenderRef.stdout.ref = STDOUT\n"
                "appender.stdout.type = Console\n"
                "appender.stdout.name = STDOUT\n"
                "appender.stdout.layout.type = PatternLayout\n"
                "appender.stdout.layout.pattern = [%d] %p %m (%c)%n\n"
                "logger.kafka.name = kafka.server.KafkaRaftServer\n"
                "logger.kafka.level = INFO\n"
            )
        return path


def _new_cluster_id() -> str:
    """A random KRaft cluster id; never one starting with '-', which the storage tool reads as an option."""
    cluster_id = "-"
    while cluster_id.startswith("-"):
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    return cluster_id


def _alive(pid: int) -> bool:
    try:
        waited_pid, _ = os.waitpid(pid, os.WNOHANG)
        if waited_pid == pid:  # our own child that has exited: reaped now
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return False


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0
