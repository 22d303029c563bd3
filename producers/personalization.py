"""Personalization on the client: layers that never leave it, and local fine-tuning of the global model.

(a) Personal layers (FedPer-style): parameters whose names start with one of ``personal_prefixes`` (for
``HarCnn`` the head, :data:`HAR_CNN_HEAD`) stay on the client. The client trains the whole model but sends
a delta of the shared parameters only, so the global model — and every byte on the wire — covers the rest.
(b) Fine-tuning: a client takes the received global model and trains it for a few steps on its own data
before using it; nothing is sent.

Both are judged per client on that client's own held-out (validation) windows, global vs personalized.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from torch import nn

from producers.client import LocalData
from producers.models import load_model_weights, model_weights
from producers.training import Evaluation, LocalTrainingConfig, LossFunction, evaluate, train_locally
from schemas.tensors import Tensors

__all__ = [
    "HAR_CNN_HEAD",
    "ClientPersonalization",
    "check_prefixes",
    "evaluate_client",
    "fine_tune",
    "is_personal",
    "merge_weights",
    "split_weights",
]

HAR_CNN_HEAD: tuple[str, ...] = ("classifier.",)
"""Parameter-name prefixes of ``HarCnn``'s two-layer head: the layers a device keeps for itself."""


def is_personal(name: str, personal_prefixes: Sequence[str]) -> bool:
    """Whether parameter ``name`` stays on the client."""
    return any(name.startswith(prefix) for prefix in personal_prefixes)


def check_prefixes(names: Iterable[str], personal_prefixes: Sequence[str]) -> None:
    """Raise ``ValueError`` if a prefix matches no parameter, or if the prefixes leave nothing shared."""
    names = list(names)
    unmatched = [prefix for prefix in personal_prefixes if not any(name.startswith(prefix) for name in names)]
    if unmatched:
        raise ValueError(f"personal prefixes {unmatched} match no parameter; parameters are {names}")
    if names and all(is_personal(name, personal_prefixes) for name in names):
        raise ValueError(f"personal prefixes {list(personal_prefixes)} cover every parameter; nothing is shared")


def split_weights(
    weights: Mapping[str, npt.NDArray[np.float32]], personal_prefixes: Sequence[str]
) -> tuple[Tensors, Tensors]:
    """Return ``(shared, personal)`` copies of ``weights``, in the original order."""
    shared = {name: value.copy() for name, value in weights.items() if not is_personal(name, personal_prefixes)}
    personal = {name: value.copy() for name, value in weights.items() if is_personal(name, personal_prefixes)}
    return shared, personal


def merge_weights(
    shared: Mapping[str, npt.NDArray[np.float32]], personal: Mapping[str, npt.NDArray[np.float32]]
) -> Tensors:
    """Return one set of weights from disjoint shared and personal parts."""
    overlap = sorted(set(shared) & set(personal))
    if overlap:
        raise ValueError(f"shared and personal weights overlap on {overlap}")
    return {**{name: value.copy() for name, value in shared.items()}, **{n: v.copy() for n, v in personal.items()}}


def fine_tune(
    model: nn.Module, start: Mapping[str, npt.NDArray[np.float32]], data: LocalData, config: LocalTrainingConfig
) -> Tensors:
    """Load ``start`` into ``model``, train it on the client's own training data, return the result."""
    load_model_weights(model, start)
    train_locally(model, data.train_features, data.train_labels, config)
    return model_weights(model)


@dataclass(frozen=True)
class ClientPersonalization:
    """One client's global-vs-personalized comparison on its own validation windows."""

    client_id: str
    global_evaluation: Evaluation
    personalized_evaluation: Evaluation

    @property
    def gain(self) -> float:
        """Accuracy points (as a fraction) the personalized model adds over the global one."""
        return self.personalized_evaluation.accuracy - self.global_evaluation.accuracy


def evaluate_client(
    model: nn.Module,
    client_id: str,
    global_weights: Mapping[str, npt.NDArray[np.float32]],
    data: LocalData,
    *,
    personal_weights: Mapping[str, npt.NDArray[np.float32]] | None = None,
    fine_tuning: LocalTrainingConfig | None = None,
    loss: LossFunction | None = None,
) -> ClientPersonalization:
    """Compare the global model with the client's personalized one on the client's validation windows.

    The personalized model is the global model with the client's ``personal_weights`` swapped in (personal
    layers), then fine-tuned with ``fine_tuning`` if given. With neither, both evaluations are the same.
    ``loss`` scores both (None: ``fine_tuning.loss`` when given, else cross-entropy); for a regression their
    accuracy, and so ``gain``, is NaN.
    """
    if loss is None and fine_tuning is not None:
        loss = fine_tuning.loss
    if len(data.validation_labels) == 0:
        raise ValueError(f"client {client_id!r} has no validation windows to evaluate on")
    load_model_weights(model, global_weights)
    global_evaluation = evaluate(model, data.validation_features, data.validation_labels, loss=loss)
    personalized = dict(global_weights)
    if personal_weights is not None:
        unknown = sorted(set(personal_weights) - set(global_weights))
        if unknown:
            raise ValueError(f"personal weights {unknown} are not parameters of the model")
        personalized.update(personal_weights)
    if fine_tuning is not None:
        personalized = fine_tune(model, personalized, data, fine_tuning)
    load_model_weights(model, personalized)
    personalized_evaluation = evaluate(model, data.validation_features, data.validation_labels, loss=loss)
    return ClientPersonalization(client_id, global_evaluation, personalized_evaluation)
