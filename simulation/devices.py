"""What a client's update costs in time: its device's delay, its training steps and its upload.

One cost model for every strategy, so that synchronous rounds and asynchronous buffers are charged alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from producers.fleet import DeviceSpeeds
from producers.updates import build_update


@dataclass(frozen=True)
class NetworkSpeeds:
    """Per-device uplink speed in bytes per second: log-normal around ``median_bytes_per_second``.

    ``median_bytes_per_second=None`` means uploads take no time.
    """

    median_bytes_per_second: float | None = 1_000_000.0
    sigma: float = 0.5

    def __post_init__(self) -> None:
        """Reject a non-positive median or a negative spread."""
        if self.median_bytes_per_second is not None and not self.median_bytes_per_second > 0:
            raise ValueError(f"median_bytes_per_second must be > 0 or None, got {self.median_bytes_per_second!r}")
        if not self.sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma!r}")


def update_message_bytes(model_name: str, shared: Mapping[str, npt.NDArray[np.float32]]) -> int:
    """Size of one encoded ``fl.updates`` message carrying a delta over ``shared`` (header included)."""
    zeros = {name: np.zeros_like(value) for name, value in shared.items()}
    _, value = build_update(
        client_id="client-000", model_name=model_name, base_version=0, sample_count=1, delta=zeros, update_id="0" * 32
    )
    return len(value)


class DeviceCosts:
    """Per device: a typical delay (:class:`DeviceSpeeds`), an uplink, and the time of one training step.

    An update costs ``steps * seconds_per_step`` of training (its work grows with the client's samples and
    epochs) plus the device's delay times a log-normal per-update jitter (``jitter_sigma``) plus its upload
    (message size over the device's uplink). The delay and the upload come after the training, as a slow
    device in :class:`producers.fleet.SimulatedFleet` holds its trained update before publishing it.
    """

    def __init__(
        self,
        device_count: int,
        message_bytes: int,
        *,
        speeds: DeviceSpeeds,
        network: NetworkSpeeds,
        jitter_sigma: float,
        seconds_per_step: float,
        seed: int,
    ) -> None:
        """Draw each device's delay and uplink; ``seed`` fixes them and the jitter."""
        if not jitter_sigma >= 0:
            raise ValueError(f"jitter_sigma must be >= 0, got {jitter_sigma!r}")
        if not seconds_per_step >= 0:
            raise ValueError(f"seconds_per_step must be >= 0, got {seconds_per_step!r}")
        self.compute_seconds = speeds.draw(device_count)
        """Each device's typical delay between training and sending (before jitter)."""
        if network.median_bytes_per_second is None:
            self.upload_seconds = [0.0] * device_count
        else:
            rng = np.random.default_rng([seed, 1])
            uplinks = network.median_bytes_per_second * np.exp(network.sigma * rng.standard_normal(device_count))
            self.upload_seconds = [float(message_bytes / uplink) for uplink in uplinks]
        self.jitter_sigma = jitter_sigma
        self.seconds_per_step = seconds_per_step
        self._jitter = np.random.default_rng([seed, 2])

    def training_seconds(self, steps: int) -> float:
        """Compute time of ``steps`` local training steps."""
        return steps * self.seconds_per_step

    def delay_seconds(self, device: int) -> float:
        """The device's own delay (with a fresh jitter) and its upload: everything but the training steps."""
        jitter = math.exp(self.jitter_sigma * float(self._jitter.standard_normal())) if self.jitter_sigma else 1.0
        return self.compute_seconds[device] * jitter + self.upload_seconds[device]

    def update_seconds(self, device: int, steps: int) -> float:
        """From the start of training to the update's arrival: delay, upload and ``steps`` of training."""
        return self.delay_seconds(device) + self.training_seconds(steps)
