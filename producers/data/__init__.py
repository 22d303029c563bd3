"""Client-side data sets: what a device or a partner silo trains on. Nothing here leaves the client."""

from producers.data.hapt import (
    ACTIVITY_NAMES,
    CHANNEL_NAMES,
    ClientDataset,
    HaptDataUnavailableError,
    HaptFormatError,
    HaptSession,
    LabelledWindows,
    Standardizer,
    load_hapt_clients,
    load_hapt_sessions,
    make_windows,
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
