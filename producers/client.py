"""``FederatedClient``: one device or silo. Fetch the newest global model, train on local data, publish Δ."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from torch import nn

from producers.identity import ClientIdentity
from producers.models import load_model_weights, model_weights
from producers.personalization import (
    ClientPersonalization,
    check_prefixes,
    evaluate_client,
    fine_tune,
    is_personal,
    merge_weights,
    split_weights,
)
from producers.training import Evaluation, LocalTrainingConfig, evaluate, train_locally
from producers.updates import build_update_messages, model_delta
from schemas.cohorts import in_cohort
from schemas.messages import ClientMetrics, Encoding, UpdateHeader
from schemas.tensors import Tensors
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
    ``global_evaluation`` is the model training started from, on the client's validation data: the global
    version, with the client's own personal layers when it keeps some (None without validation data).
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


class PersonalLayersInGlobalModelError(ValueError):
    """A global version carries parameters the client keeps personal: the job was started with the whole model.

    The job accepts only deltas with exactly the global model's parameters, and this client sends the shared
    ones only, so every update would be rejected. Start the job from
    :func:`producers.personalization.shared_model_weights` of the model instead.
    """


class FederatedClient:
    """Trains ``model`` on ``data`` from whatever global version is newest; never waits for a round.

    An update that does not fit one Kafka message (``max_message_bytes``; in :meth:`run_once` the publisher's
    limit, which its settings give) travels as chunks, and so does every update in an ``update_encoding``
    other than float32 (float16 or int8: smaller, inexact).

    Personalization (both off by default; see :mod:`producers.personalization`):

    - ``personal_prefixes``: parameters whose names start with one of these (for ``HarCnn`` the head,
      ``HAR_CNN_HEAD``) never leave the device. The client starts them from ``model``'s own values and keeps
      its trained values across versions; from each global version it loads the shared parameters, trains the
      whole model, and sends a delta of the shared parameters only. The global model is therefore the shared
      parameters alone: the job must start from ``shared_model_weights(model, personal_prefixes)``, and a global
      version that carries personal layers is refused (:class:`PersonalLayersInGlobalModelError`).
    - ``fine_tuning``: how the device adapts a global version to its own training data for local use
      (:meth:`personalized_weights`); it trains a copy of the model, and nothing of it is sent.

    :meth:`evaluate_personalization` sets the global model against the personalized one on the client's own
    validation data.
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
        personal_prefixes: Sequence[str] = (),
        fine_tuning: LocalTrainingConfig | None = None,
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
        weights = model_weights(model)
        prefixes = personal_prefixes if isinstance(personal_prefixes, str | bytes) else tuple(personal_prefixes)
        check_prefixes(weights, prefixes)  # also refuses a bare string and empty prefixes
        self.personal_prefixes: tuple[str, ...] = tuple(prefixes)
        self.initial_personal_weights: Tensors = split_weights(weights, self.personal_prefixes)[1]
        """The personal layers as ``model`` came: every device of a federation starts from the same ones."""
        self._personal: Tensors = {name: value.copy() for name, value in self.initial_personal_weights.items()}
        if fine_tuning is not None and not isinstance(fine_tuning, LocalTrainingConfig):
            raise ValueError(f"fine_tuning must be a LocalTrainingConfig or None, got {type(fine_tuning).__name__}")
        self.fine_tuning = fine_tuning
        self._scratch: nn.Module | None = None

    @property
    def personal_weights(self) -> Tensors:
        """A copy of the device's own values of its personal layers (empty without ``personal_prefixes``)."""
        return {name: value.copy() for name, value in self._personal.items()}

    def _shared_parameters(self, global_model: DecodedModel) -> Tensors:
        """The received version's parameters, checked to carry none of the personal layers."""
        parameters = global_model.parameters
        carried = sorted(name for name in parameters if is_personal(name, self.personal_prefixes))
        if carried:
            raise PersonalLayersInGlobalModelError(
                f"global version {global_model.header.version} of {global_model.header.model_name!r} carries "
                f"{carried[:5]}, which client {self.client_id!r} keeps personal (prefixes "
                f"{list(self.personal_prefixes)}): start the job from shared_model_weights(model, personal_prefixes)"
            )
        return parameters

    def in_cohort(self, global_model: DecodedModel) -> bool:
        """Whether this client trains on ``global_model``: in a synchronous round only if the cohort draw picks it.

        A version whose signed header names no ``cohort_fraction`` opens no round: every client may train on it.
        The job refuses an update from a client outside the round's cohort (``not_in_cohort``).
        """
        header = global_model.header
        return in_cohort(header.model_name, header.version, self.client_id, header.cohort_fraction)

    def prepare_update(self, global_model: DecodedModel, *, max_message_bytes: int | None = None) -> PreparedUpdate:
        """Evaluate the received global model on local validation data, train from it, and encode Δ.

        ``max_message_bytes`` (default: the client's) is the largest message the update may use. With personal
        layers the model evaluated and trained is the version's shared parameters with the device's own personal
        layers; Δ covers the shared parameters only, and the device keeps the personal layers it trained.
        """
        base = self._shared_parameters(global_model)
        start = merge_weights(base, self._personal) if self.personal_prefixes else base
        load_model_weights(self.model, start)
        global_evaluation = None
        if len(self.data.validation_labels):
            global_evaluation = evaluate(
                self.model, self.data.validation_features, self.data.validation_labels, loss=self.training.loss
            )
        report = train_locally(self.model, self.data.train_features, self.data.train_labels, self.training, start)
        trained, personal = split_weights(model_weights(self.model), self.personal_prefixes)
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
            delta=model_delta(trained, base),
            max_message_bytes=self.max_message_bytes if max_message_bytes is None else max_message_bytes,
            encoding=self.update_encoding,
            metrics=metrics,
            signer=None if self.identity is None else self.identity.sign,
        )
        self._personal = personal  # kept once the update is built: a refused one leaves them as they were
        return PreparedUpdate(header=header, values=tuple(values), global_evaluation=global_evaluation)

    def personalized_weights(self, global_model: DecodedModel) -> Tensors:
        """The model this device uses locally from ``global_model``: nothing of it is sent.

        The version's shared parameters with the device's own personal layers, then fine-tuned on its training
        data with ``fine_tuning`` when set (a copy of the model trains; the one that makes updates is untouched).
        Without either option it is the global version as received.
        """
        shared = self._shared_parameters(global_model)
        start = merge_weights(shared, self._personal)
        if self.fine_tuning is None:
            return start
        return fine_tune(self._scratch_model(), start, self.data, self.fine_tuning)

    def evaluate_personalization(
        self, global_model: DecodedModel, *, global_personal: Mapping[str, npt.NDArray[np.float32]] | None = None
    ) -> ClientPersonalization:
        """The global model and the personalized one on this client's own validation data: both figures.

        Personalized: as :meth:`personalized_weights`. Global: the version as received; with personal layers,
        which no global version carries, its shared parameters complete with ``global_personal`` (a new device
        has no layers of its own: the demo passes the mean of its devices') or, by default, the layers every
        device started from. ``ValueError`` if the client has no validation data.
        """
        shared = self._shared_parameters(global_model)
        global_weights = shared
        if self.personal_prefixes:
            filler = self.initial_personal_weights if global_personal is None else global_personal
            global_weights = merge_weights(shared, filler)
        return evaluate_client(
            self._scratch_model(),
            self.client_id,
            global_weights,
            self.data,
            personal_weights=self._personal or None,
            fine_tuning=self.fine_tuning,
            loss=self.training.loss,
        )

    def _scratch_model(self) -> nn.Module:
        """A copy of the model for fine-tuning and evaluation, so that they never disturb training."""
        if self._scratch is None:
            self._scratch = copy.deepcopy(self.model)
        return self._scratch

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
