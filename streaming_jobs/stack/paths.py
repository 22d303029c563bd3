"""Where the local stack keeps its downloads and its state.

Downloads (jars) go to a per-user cache shared by every checkout, so a second set-up is offline and fast.
State (broker logs, Delta tables, checkpoints, MLflow store) goes to one folder per checkout.
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


def state_dir() -> Path:
    """Local state of this checkout: ``$FEDSTREAM_HOME`` or ``./.fedstream``."""
    configured = os.environ.get("FEDSTREAM_HOME")
    root = Path(configured) if configured else Path.cwd() / ".fedstream"
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()
