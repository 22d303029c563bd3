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
from producers.updates import build_update, model_delta
from schemas.messages import ClientMetrics, UpdateHeader
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
    """An update trained and encoded, ready to publish (possibly later: a slow device)."""

    header: UpdateHeader
    value: bytes
    global_evaluation: Evaluation | None


class FederatedClient:
    """Trains ``model`` on ``data`` from whatever global version is newest; never waits for a round."""

    def __init__(
        self,
        client_id: str,
        model_name: str,
        model: nn.Module,
        data: LocalData,
        training: LocalTrainingConfig,
        identity: ClientIdentity | None = None,
    ) -> None:
        self.client_id = client_id
        self.model_name = model_name
        self.model = model
        self.data = data
        self.training = training
        if identity is not None and identity.client_id != client_id:
            raise ValueError(f"identity belongs to {identity.client_id!r}, not to client {client_id!r}")
        self.identity = identity

    def prepare_update(self, global_model: DecodedModel) -> PreparedUpdate:
        """Evaluate the received global model on local validation data, train from it, and encode Δ."""
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
        header, value = build_update(
            client_id=self.client_id,
            model_name=self.model_name,
            base_version=global_model.header.version,
            sample_count=report.sample_count,
            delta=model_delta(model_weights(self.model), base),
            metrics=metrics,
            signer=None if self.identity is None else self.identity.sign,
        )
        return PreparedUpdate(header=header, value=value, global_evaluation=global_evaluation)

    def run_once(self, subscriber: GlobalModelSubscriber, publisher: UpdatePublisher) -> PreparedUpdate:
        """One cycle: newest global version → local training → acknowledged publish."""
        prepared = self.prepare_update(subscriber.newest())
        publisher.publish(self.client_id, prepared.value, model_name=prepared.header.model_name)
        return prepared
