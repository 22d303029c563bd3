"""Personalization on the client: layers that never leave it, and local fine-tuning of the global model.

(a) Personal layers (FedPer-style): parameters whose names start with one of ``personal_prefixes`` (for
``HarCnn`` the head, :data:`HAR_CNN_HEAD`) stay on the client. The client trains the whole model but sends
a delta of the shared parameters only, so the global model — and every byte on the wire — covers the rest.
(b) Fine-tuning: a client takes the received global model and trains it for a few steps on its own data
before using it; nothing is sent.

Both are judged per client on that client's own held-out (validation) windows, global vs personalized.

The simulator (:mod:`simulation.clients`) and the deployed client (:class:`producers.client.FederatedClient`,
``personal_prefixes=`` and ``fine_tuning=``) both build on these functions. In the deployed pipeline the
global model is the shared parameters only: the job starts from :func:`shared_model_weights` of the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from torch import nn

from producers.models import load_model_weights, model_weights
from producers.training import Evaluation, LocalTrainingConfig, LossFunction, evaluate, train_locally
from schemas.tensors import Tensors

if TYPE_CHECKING:  # producers.client imports this module; LocalData is only an annotation here
    from producers.client import LocalData

__all__ = [
    "HAR_CNN_HEAD",
    "ClientPersonalization",
    "average_weights",
    "check_prefixes",
    "evaluate_client",
    "fine_tune",
    "is_personal",
    "merge_weights",
    "shared_model_weights",
    "split_weights",
]

HAR_CNN_HEAD: tuple[str, ...] = ("classifier.",)
"""Parameter-name prefixes of ``HarCnn``'s two-layer head: the layers a device keeps for itself."""


def is_personal(name: str, personal_prefixes: Sequence[str]) -> bool:
    """Whether parameter ``name`` stays on the client."""
    return any(name.startswith(prefix) for prefix in personal_prefixes)


def check_prefixes(names: Iterable[str], personal_prefixes: Sequence[str]) -> None:
    """Raise ``ValueError`` if a prefix matches no parameter, or if the prefixes leave nothing shared.

    ``personal_prefixes`` is a sequence of non-empty strings: a bare string (``"classifier."``, which would
    read as its characters) or an empty or non-string prefix is refused too.
    """
    if isinstance(personal_prefixes, str | bytes):
        raise ValueError(
            f"personal prefixes must be a sequence of strings, got the single {type(personal_prefixes).__name__} "
            f"{personal_prefixes!r}: write ({personal_prefixes!r},)"
        )
    bad = [prefix for prefix in personal_prefixes if not isinstance(prefix, str) or not prefix]
    if bad:
        raise ValueError(
            "personal prefixes must be non-empty strings, got "
            + ", ".join(f"{prefix!r} ({type(prefix).__name__})" for prefix in bad)
        )
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


def shared_model_weights(model: nn.Module, personal_prefixes: Sequence[str]) -> Tensors:
    """``model``'s weights without its personal layers: the job's initial model (version 0) when clients keep them.

    The job accepts an update only if its delta has exactly the global model's names and shapes, and a client
    with personal layers sends the shared parameters only; so the global model must be those alone.
    """
    weights = model_weights(model)
    check_prefixes(weights, personal_prefixes)
    return split_weights(weights, personal_prefixes)[0]


def merge_weights(
    shared: Mapping[str, npt.NDArray[np.float32]], personal: Mapping[str, npt.NDArray[np.float32]]
) -> Tensors:
    """Return one set of weights from disjoint shared and personal parts."""
    overlap = sorted(set(shared) & set(personal))
    if overlap:
        raise ValueError(f"shared and personal weights overlap on {overlap}")
    return {**{name: value.copy() for name, value in shared.items()}, **{n: v.copy() for n, v in personal.items()}}


def average_weights(weights: Sequence[Mapping[str, npt.NDArray[np.float32]]]) -> Tensors:
    """The element-wise mean of several sets of the same weights (say, the devices' personal layers).

    Personal layers have no global value; their mean over the devices is the nearest thing a new user could get.
    """
    if not weights:
        raise ValueError("no weights to average")
    names = list(weights[0])
    differing = [index for index, each in enumerate(weights) if set(each) != set(names)]
    if differing:
        raise ValueError(f"weights {differing} do not have the names of the first set, {names}")
    return {name: np.mean([each[name] for each in weights], axis=0).astype(np.float32) for name in names}


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
