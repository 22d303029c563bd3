"""Client-side data sets: what a device or a partner silo trains on. Nothing here leaves the client."""

from producers.data.hapt import (
    ACTIVITY_NAMES,
    ClientDataset,
    LabelledWindows,
    Standardizer,
    load_hapt_clients,
    make_windows,
)
from producers.data.hapt_archive import (
    CHANNEL_NAMES,
    HaptDataUnavailableError,
    HaptFormatError,
    HaptSession,
    load_hapt_sessions,
)

__all__ = [
    "ACTIVITY_NAMES",
    "CHANNEL_NAMES",
    "ClientDataset",
    "HaptDataUnavailableError",
    "HaptFormatError",
    "HaptSession",
    "LabelledWindows",
    "Standardizer",
    "load_hapt_clients",
    "load_hapt_sessions",
    "make_windows",
]
