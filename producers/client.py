"""``FederatedClient``: one device or silo. Fetch the newest global model, train on local data, publish Δ."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from torch import nn

from producers.identity import ClientIdentity
from producers.models import load_model_weights, model_weights
from producers.training import Evaluation, LocalTrainingConfig, evaluate, train_locally
from producers.updates import build_update_messages, model_delta
from schemas.messages import ClientMetrics, Encoding, UpdateHeader
from schemas.topics import MAX_MESSAGE_BYTES
from schemas.wire import DecodedModel

if TYPE_CHECKING:  # the caller brings its transport: training and the simulator run without kafka installed
    from producers.transport import GlobalModelSubscriber, UpdatePublisher


@dataclass(frozen=True)
class LocalData:
    """A client's own data; it never leaves the client.

    Labels are int64 class indices for the default cross-entropy, or whatever targets the training
    config's ``loss`` takes (float32 values for a regression such as heart rate).
    """

    train_features: npt.NDArray[np.float32]
    train_labels: npt.NDArray[np.int64] | npt.NDArray[np.float32]
    validation_features: npt.NDArray[np.float32]
    validation_labels: npt.NDArray[np.int64] | npt.NDArray[np.float32]


@dataclass(frozen=True)
class PreparedUpdate:
    """An update trained and encoded, ready to publish (possibly later: a slow device).

    ``values`` is one whole ``fl.updates`` message, or the update's chunks in index order when it did not fit
    one message or travels in another encoding than float32 (then ``header.layout`` is set).
    """

    header: UpdateHeader
    values: tuple[bytes, ...]
    global_evaluation: Evaluation | None

    @property
    def chunked(self) -> bool:
        """True when the update travels as chunks."""
        return self.header.layout is not None

    @property
    def value(self) -> bytes:
        """The whole message of an update that is one; ``ValueError`` for a chunked update (send ``values``)."""
        if self.chunked:
            raise ValueError(f"update {self.header.update_id} travels as {len(self.values)} chunks: send `values`")
        (whole,) = self.values
        return whole

    @property
    def size_bytes(self) -> int:
        """Bytes of all its messages together."""
        return sum(len(value) for value in self.values)


class FederatedClient:
    """Trains ``model`` on ``data`` from whatever global version is newest; never waits for a round.

    An update that does not fit one Kafka message (``max_message_bytes``; in :meth:`run_once` the publisher's
    limit, which its settings give) travels as chunks, and so does every update in an ``update_encoding``
    other than float32 (float16 or int8: smaller, inexact).
    """

    def __init__(
        self,
        client_id: str,
        model_name: str,
        model: nn.Module,
        data: LocalData,
        training: LocalTrainingConfig,
        identity: ClientIdentity | None = None,
        *,
        update_encoding: Encoding = Encoding.FLOAT32,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        self.client_id = client_id
        self.model_name = model_name
        self.model = model
        self.data = data
        self.training = training
        self.update_encoding = Encoding(update_encoding)
        if max_message_bytes <= 0:
            raise ValueError(f"max_message_bytes must be positive, got {max_message_bytes}")
        self.max_message_bytes = max_message_bytes
        if identity is not None and identity.client_id != client_id:
            raise ValueError(f"identity belongs to {identity.client_id!r}, not to client {client_id!r}")
        self.identity = identity

    def prepare_update(self, global_model: DecodedModel, *, max_message_bytes: int | None = None) -> PreparedUpdate:
        """Evaluate the received global model on local validation data, train from it, and encode Δ.

        ``max_message_bytes`` (default: the client's) is the largest message the update may use.
        """
        base = global_model.parameters
        load_model_weights(self.model, base)
        global_evaluation = None
        if len(self.data.validation_labels):
            global_evaluation = evaluate(
                self.model, self.data.validation_features, self.data.validation_labels, loss=self.training.loss
            )
        report = train_locally(self.model, self.data.train_features, self.data.train_labels, self.training, base)
        metrics = ClientMetrics(
            validation_loss=None if global_evaluation is None else global_evaluation.loss,
            validation_accuracy=(
                global_evaluation.accuracy if global_evaluation is not None and global_evaluation.has_accuracy else None
            ),
            validation_count=0 if global_evaluation is None else global_evaluation.count,
            training_loss=report.mean_loss,
            training_steps=report.steps,
        )
        header, values = build_update_messages(
            client_id=self.client_id,
            model_name=self.model_name,
            base_version=global_model.header.version,
            sample_count=report.sample_count,
            delta=model_delta(model_weights(self.model), base),
            max_message_bytes=self.max_message_bytes if max_message_bytes is None else max_message_bytes,
            encoding=self.update_encoding,
            metrics=metrics,
            signer=None if self.identity is None else self.identity.sign,
        )
        return PreparedUpdate(header=header, values=tuple(values), global_evaluation=global_evaluation)

    def run_once(self, subscriber: GlobalModelSubscriber, publisher: UpdatePublisher) -> PreparedUpdate:
        """One cycle: newest global version → local training → acknowledged publish (of every chunk, if chunked).

        The update fits the publisher's ``max_message_bytes`` (its Kafka settings' limit) where it has one.
        """
        # A publisher without the attribute (a caller's own transport) keeps to the client's limit.
        limit = getattr(publisher, "max_message_bytes", None)
        prepared = self.prepare_update(subscriber.newest(), max_message_bytes=limit)
        model_name = prepared.header.model_name
        if prepared.chunked:
            publisher.publish_chunks(self.client_id, prepared.values, model_name=model_name)
        else:  # a whole update goes out as before, so a caller's own publisher needs no publish_chunks
            publisher.publish(self.client_id, prepared.value, model_name=model_name)
        return prepared
