"""Where fedstream keeps its downloads and its local state, as every party (client, job, CLI, dev stack) finds them.

Downloads (jars) go to a per-user cache shared by every checkout, so a second set-up is offline and fast.
State (broker logs, Delta tables, checkpoints, MLflow store, the local job key pair) goes to one folder per
checkout. On Databricks the job keeps its state in Unity Catalog and on a volume instead.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Per-user download cache: ``$FEDSTREAM_CACHE`` or ``~/.cache/fedstream``."""
    configured = os.environ.get("FEDSTREAM_CACHE")
    root = Path(configured) if configured else Path.home() / ".cache" / "fedstream"
    root.mkdir(parents=True, exist_ok=True)
    return root


def state_dir(*, create: bool = True) -> Path:
    """Local state of this checkout: ``$FEDSTREAM_HOME`` or ``./.fedstream`` (made unless ``create`` is False)."""
    configured = os.environ.get("FEDSTREAM_HOME")
    root = Path(configured) if configured else Path.cwd() / ".fedstream"
    if create:
        root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


LOCAL_JOB_KEY_NAME = "fedstream-job"
"""File stem of the job's signing key pair that a local job makes on first use (local clients read its ``.pub``)."""


def local_job_key_files(*, create_folder: bool = False) -> tuple[Path, Path]:
    """The local job key pair: ``<state>/keys/fedstream-job.key`` (private) and ``.pub`` (public)."""
    folder = state_dir(create=create_folder) / "keys"
    if create_folder:
        folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{LOCAL_JOB_KEY_NAME}.key", folder / f"{LOCAL_JOB_KEY_NAME}.pub"
