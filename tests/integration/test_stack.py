"""`fedstream stack up|down|status` against a broker of its own (own port, own state folder)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port_pair

pytestmark = pytest.mark.stack


def _fedstream(home: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FEDSTREAM_HOME": str(home), "FEDSTREAM_KAFKA_PORT": str(port)}
    return subprocess.run(
        [sys.executable, "-m", "fedstream.cli", "stack", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(") ", 1)[1][0] != "Z"


def test_up_twice_down_and_status_tell_the_truth(tmp_path: Path) -> None:
    port = free_port_pair(19192)
    first = _fedstream(tmp_path, port, "up")
    assert first.returncode == 0, first.stderr
    pid = int((tmp_path / "kafka" / "broker.pid").read_text())
    assert _pid_alive(pid)

    second = _fedstream(tmp_path, port, "up")
    assert second.returncode == 0, second.stderr
    assert int((tmp_path / "kafka" / "broker.pid").read_text()) == pid, "a second `up` must reuse the broker"
    assert "starting Kafka broker" not in second.stdout

    running = _fedstream(tmp_path, port, "status")
    assert running.returncode == 0
    assert f"running (pid {pid}) on localhost:{port}" in running.stdout

    down = _fedstream(tmp_path, port, "down")
    assert down.returncode == 0, down.stderr
    assert not _pid_alive(pid), "`down` left the broker process behind"

    stopped = _fedstream(tmp_path, port, "status")
    assert stopped.returncode == 3
    assert "kafka: stopped" in stopped.stdout


def test_status_notices_a_broker_killed_behind_its_back(tmp_path: Path) -> None:
    port = free_port_pair(19292)
    assert _fedstream(tmp_path, port, "up").returncode == 0
    pid = int((tmp_path / "kafka" / "broker.pid").read_text())
    os.kill(pid, 9)
    for _ in range(50):
        if not _pid_alive(pid):
            break
        subprocess.run(["sleep", "0.1"], check=True)
    status = _fedstream(tmp_path, port, "status")
    assert status.returncode == 3
    assert "kafka: stopped" in status.stdout
    assert _fedstream(tmp_path, port, "down").returncode == 0
