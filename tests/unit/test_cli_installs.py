"""Each install gets the commands it can run: a client-only install names the extra a server command needs.

Every check runs in a fresh interpreter where pyspark, delta and mlflow cannot be imported, as on a device
that installed ``fedstream[client]`` only; nothing here can start Spark.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

WITHOUT_SERVER = (
    "import sys\n"
    "for _module in ('pyspark', 'delta', 'mlflow'):\n"
    "    sys.modules[_module] = None  # any import of it now raises ModuleNotFoundError\n"
)
SERVER_HINT = "pip install 'fedstream[server]'"


def _run_without_server(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_SERVER + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
    )


def _cli(*argv: str) -> str:
    return f"from fedstream.cli import main\nsys.exit(main({list(argv)!r}))\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["job", "--initial-model", "init.safetensors"],
        ["audit", "lineage", "3"],
        ["audit", "verify", "3", "--json"],
        ["report", "--out", "report.html"],
        ["clients", "enrol", "c-1.pub"],
        ["clients", "revoke", "c-1"],
        ["export", "4", "--format", "torchscript", "--out", "model.pt"],
    ],
)
def test_a_server_command_names_the_server_extra_instead_of_a_traceback(argv: list[str], tmp_path: Path) -> None:
    completed = _run_without_server(_cli(*argv), cwd=tmp_path)
    assert completed.returncode == 2, completed.stderr
    assert SERVER_HINT in completed.stderr and "pyspark" in completed.stderr
    command = " ".join(argv[:2] if argv[0] in ("clients", "audit") else argv[:1])
    assert f"fedstream {command} needs pyspark, delta-spark" in completed.stderr.replace(" and ", ", ")
    assert "Traceback" not in completed.stderr
    assert list(tmp_path.iterdir()) == [], "nothing may be written"


def test_help_groups_the_commands_and_says_the_server_ones_are_not_installed() -> None:
    completed = _run_without_server(_cli("--help"))
    assert completed.returncode == 0, completed.stderr
    assert "server commands: job, clients enrol|revoke, audit, export, report" in completed.stdout
    assert f"{SERVER_HINT} (not installed here)" in completed.stdout
    assert "commands without Spark: clients keygen, job-key, topics" in completed.stdout


def test_client_commands_still_run_without_the_server_extra(tmp_path: Path) -> None:
    completed = _run_without_server(_cli("clients", "keygen", "c-device-1", "--out", str(tmp_path)))
    assert completed.returncode == 0, completed.stderr
    assert (tmp_path / "c-device-1.pub").is_file()
    assert "pyspark" not in completed.stderr


def test_a_server_import_the_table_missed_is_still_caught_at_dispatch(tmp_path: Path) -> None:
    code = "import fedstream.cli\nfedstream.cli._REQUIRED_MODULES.clear()\n" + _cli("report", "--out", "r.html")
    completed = _run_without_server(code, cwd=tmp_path)
    assert completed.returncode == 2, completed.stderr
    assert "fedstream report needs pyspark" in completed.stderr and SERVER_HINT in completed.stderr
    assert "Traceback" not in completed.stderr


def test_other_missing_modules_still_raise() -> None:
    code = """
        import argparse
        import fedstream.cli

        def _broken(args):
            import no_such_module_anywhere

        def _parser():
            parser = argparse.ArgumentParser()
            parser.set_defaults(handler=_broken)
            return parser

        fedstream.cli._parser = _parser
        sys.exit(fedstream.cli.main([]))
        """
    completed = _run_without_server(code)
    assert completed.returncode == 1
    assert "ModuleNotFoundError: No module named 'no_such_module_anywhere'" in completed.stderr
