"""One federated configuration to simulate: aggregation, local training, how many clients take part."""

from __future__ import annotations

from dataclasses import dataclass

from aggregator import AggregationConfig
from producers.training import LocalTrainingConfig
from schemas.messages import Encoding


@dataclass(frozen=True)
class StrategyConfig:
    """One federated configuration to simulate.

    ``concurrency``: clients training at once (asynchronous) or sampled per round (synchronous).
    ``synchronous``: rounds that wait for every sampled client (implied by a synchronous strategy such as
    ``fedavg``); with ``fedbuff`` a synchronous round is one FedBuff version (a server optimizer).
    ``personal_prefixes``: parameter-name prefixes that stay on each client (see
    :mod:`producers.personalization`). ``fine_tuning``: local steps a client takes on the final global
    model before it is evaluated on the client's own data (``None``: no fine-tuning). ``update_encoding``:
    how clients send their deltas (as ``FederatedClient(update_encoding=...)``); the server aggregates what
    the job decodes from those bytes (:mod:`simulation.encoding`). Only the values change: uploads are
    still charged the float32 message, so runs that differ only in encoding see the same arrivals.
    """

    name: str
    aggregation: AggregationConfig
    training: LocalTrainingConfig
    concurrency: int = 10
    synchronous: bool = False
    personal_prefixes: tuple[str, ...] = ()
    fine_tuning: LocalTrainingConfig | None = None
    update_encoding: Encoding = Encoding.FLOAT32

    def __post_init__(self) -> None:
        """Check that the fields fit together."""
        if isinstance(self.concurrency, bool) or not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {self.concurrency!r}")
        if not isinstance(self.update_encoding, Encoding):
            raise ValueError(f"update_encoding must be an Encoding, got {self.update_encoding!r}")
