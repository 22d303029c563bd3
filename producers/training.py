"""Local training on a client (plain SGD/Adam with an optional FedProx proximal term) and evaluation.

Training runs in place on the model's device (the CPU on a phone or a silo's node) and is deterministic
for a given seed: shuffling uses its own generator and the global torch random state is restored after.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as functional
from torch import nn

from producers.models import weight_problems

__all__ = [
    "Evaluation",
    "LocalTrainingConfig",
    "LossFunction",
    "TrainingReport",
    "evaluate",
    "train_locally",
]

OptimizerName = Literal["sgd", "adam"]
LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(outputs, targets) -> scalar``: the mean loss of a batch, e.g. ``torch.nn.functional.mse_loss``."""
_OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


@dataclass(frozen=True)
class LocalTrainingConfig:
    """How a client trains on its own data for one round.

    ``epochs`` passes over the data, stopped early after ``max_steps`` optimizer steps when set.
    ``proximal_mu`` > 0 adds FedProx's term ``mu/2 · ||w − w_global||²``. ``num_threads`` limits torch's
    intra-op threads for the duration of the call only (None leaves them as they are).

    ``loss`` is the objective, ``loss(outputs, targets)`` → a scalar tensor (the batch's mean). None, the
    default, is cross-entropy on integer class indices, checked against the model's class count. A custom loss
    takes the targets as given: integer arrays as int64, floating ones (regression targets such as heart rate)
    as float32, of shape (samples, …); it must reduce to the mean over the batch, since reports weight each
    batch by its size. The same loss is used to evaluate the client's validation data.
    """

    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 32
    learning_rate: float = 0.01
    optimizer: OptimizerName = "sgd"
    momentum: float = 0.9
    proximal_mu: float = 0.0
    seed: int = 0
    num_threads: int | None = None
    loss: LossFunction | None = None

    def __post_init__(self) -> None:
        problems = []
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                problems.append(f"{name} must be an int ≥ 1, got {value!r} ({type(value).__name__})")
        for name in ("max_steps", "num_threads"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 1):
                problems.append(f"{name} must be None or an int ≥ 1, got {value!r} ({type(value).__name__})")
        if not _is_real(self.learning_rate) or not math.isfinite(self.learning_rate) or self.learning_rate <= 0:
            problems.append(
                f"learning_rate must be a finite number > 0, got {self.learning_rate!r} "
                f"({type(self.learning_rate).__name__})"
            )
        for name in ("momentum", "proximal_mu"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value < 0:
                problems.append(f"{name} must be a finite number ≥ 0, got {value!r} ({type(value).__name__})")
        if self.optimizer not in _OPTIMIZERS:
            problems.append(f"optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}")
        if not _is_int(self.seed):
            problems.append(f"seed must be an int, got {self.seed!r} ({type(self.seed).__name__})")
        if self.loss is not None and not callable(self.loss):
            problems.append(f"loss must be None or a callable (outputs, targets) -> tensor, got {self.loss!r}")
        if problems:
            raise ValueError("invalid LocalTrainingConfig: " + "; ".join(problems))


@dataclass(frozen=True)
class TrainingReport:
    """What one call of :func:`train_locally` did.

    ``sample_count`` is the size of the local data set (the weight FedAvg gives the update);
    ``samples_seen`` counts samples over all steps; ``mean_loss`` is the mean training loss (cross-entropy
    unless the config names another) over those samples as the model was trained (the proximal term is not
    included).
    """

    sample_count: int
    steps: int
    samples_seen: int
    mean_loss: float


@dataclass(frozen=True)
class Evaluation:
    """Mean loss, accuracy and macro-averaged F1 of a model on ``count`` labelled samples.

    The loss is cross-entropy unless :func:`evaluate` was given another. Accuracy and macro F1 are measured
    when the targets are integer class indices of a model with one output per class; otherwise (a regression
    model) they are NaN: see :attr:`has_accuracy`.
    """

    loss: float
    accuracy: float
    macro_f1: float
    count: int

    @property
    def has_accuracy(self) -> bool:
        """False for a model whose outputs are not class scores (a regression): accuracy means nothing there."""
        return not math.isnan(self.accuracy)


@contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _model_device(model: nn.Module) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def _as_tensors(
    features: npt.ArrayLike, labels: npt.ArrayLike, device: torch.device, *, class_indices: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features as float32 and targets: int64 class indices ≥ 0, or with ``class_indices`` False any shape."""
    feature_array = np.ascontiguousarray(features, dtype=np.float32)
    label_array = np.asarray(labels)
    if feature_array.ndim < 2 or feature_array.shape[0] == 0:
        raise ValueError(f"features must be a non-empty (samples, ...) array, got shape {feature_array.shape}")
    if not class_indices:
        free_targets = _targets(label_array, feature_array.shape[0])
        if not bool(np.isfinite(feature_array).all()):
            raise ValueError("features hold NaN or infinite values")
        return torch.from_numpy(feature_array).to(device), free_targets.to(device)
    if label_array.shape != (feature_array.shape[0],):
        raise ValueError(
            f"labels must have shape ({feature_array.shape[0]},) to match the features, got {label_array.shape}"
        )
    if not np.issubdtype(label_array.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {label_array.dtype}")
    if int(label_array.min()) < 0:
        raise ValueError(f"labels must be ≥ 0, got minimum {int(label_array.min())}")
    if not bool(np.isfinite(feature_array).all()):
        raise ValueError("features hold NaN or infinite values")
    inputs = torch.from_numpy(feature_array).to(device)
    targets = torch.from_numpy(label_array.astype(np.int64)).to(device)
    return inputs, targets


def _targets(label_array: npt.NDArray[np.generic], sample_count: int) -> torch.Tensor:
    """Targets for a custom loss: integers as int64, real numbers as float32; one row per sample."""
    if label_array.ndim < 1 or label_array.shape[0] != sample_count:
        raise ValueError(f"targets must have {sample_count} rows to match the features, got shape {label_array.shape}")
    if np.issubdtype(label_array.dtype, np.integer):
        return torch.from_numpy(np.ascontiguousarray(label_array, dtype=np.int64))
    if not np.issubdtype(label_array.dtype, np.floating):
        raise ValueError(f"targets must be integer or floating-point numbers, got dtype {label_array.dtype}")
    real = np.ascontiguousarray(label_array, dtype=np.float32)
    if not bool(np.isfinite(real).all()):
        raise ValueError("targets hold NaN or infinite values")
    return torch.from_numpy(real)


def _check_label_range(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            class_count = int(model(inputs[:1]).shape[1])
    finally:
        model.train(was_training)
    highest = int(targets.max())
    if highest >= class_count:
        raise ValueError(f"label {highest} is out of range for a model with {class_count} classes")


def train_locally(
    model: nn.Module,
    features: npt.ArrayLike,
    labels: npt.ArrayLike,
    config: LocalTrainingConfig,
    global_weights: Mapping[str, object] | None = None,
) -> TrainingReport:
    """Train ``model`` in place on ``features`` (samples, …) and integer ``labels`` (samples,).

    ``labels`` are the targets of ``config.loss`` when one is set (for a regression, float targets of shape
    (samples, …)). With ``config.proximal_mu`` > 0 the objective is that loss + ``mu/2 · ||w − w_global||²`` over the
    trainable parameters (FedProx), where ``w_global`` is ``global_weights`` (as from
    :func:`producers.models.model_weights`) or, when that is None, the model's weights at the start of
    this call. ``global_weights`` only sets that anchor; it is not loaded into the model.
    """
    if not isinstance(config, LocalTrainingConfig):
        raise ValueError(f"config must be a LocalTrainingConfig, got {type(config).__name__}")
    device = _model_device(model)
    inputs, targets = _as_tensors(features, labels, device, class_indices=config.loss is None)
    if global_weights is not None:
        problems = weight_problems(model, global_weights)
        if problems:
            raise ValueError("global_weights do not fit the model: " + "; ".join(problems))
    if config.loss is None:
        _check_label_range(model, inputs, targets)

    parameters = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    anchors: list[torch.Tensor] = []
    if config.proximal_mu > 0:
        if global_weights is None:
            anchors = [p.detach().clone() for _, p in parameters]
        else:
            anchors = [
                torch.as_tensor(np.asarray(global_weights[name]), dtype=p.dtype, device=device)
                for name, p in parameters
            ]
    trainable = [p for _, p in parameters]
    optimizer: torch.optim.Optimizer
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(trainable, lr=config.learning_rate, momentum=config.momentum)
    else:
        optimizer = torch.optim.Adam(trainable, lr=config.learning_rate)

    sample_count = int(inputs.shape[0])
    shuffle = torch.Generator().manual_seed(int(config.seed))
    steps = samples_seen = 0
    loss_sum = 0.0
    was_training = model.training
    model.train()
    try:
        with _torch_threads(config.num_threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(config.seed))  # for any randomness inside the model, e.g. dropout
            for _ in range(config.epochs):
                order = torch.randperm(sample_count, generator=shuffle).to(device)
                for begin in range(0, sample_count, config.batch_size):
                    if config.max_steps is not None and steps >= config.max_steps:
                        break
                    batch = order[begin : begin + config.batch_size]
                    optimizer.zero_grad(set_to_none=True)
                    if config.loss is None:
                        loss = functional.cross_entropy(model(inputs[batch]), targets[batch])
                    else:
                        loss = _scalar_loss(config.loss(model(inputs[batch]), targets[batch]))
                    torch.autograd.backward(loss)
                    if anchors:
                        _add_proximal_gradient(trainable, anchors, config.proximal_mu)
                    optimizer.step()
                    steps += 1
                    samples_seen += int(batch.shape[0])
                    loss_sum += float(loss.detach()) * int(batch.shape[0])
                if config.max_steps is not None and steps >= config.max_steps:
                    break
    finally:
        model.train(was_training)
    return TrainingReport(
        sample_count=sample_count,
        steps=steps,
        samples_seen=samples_seen,
        mean_loss=loss_sum / samples_seen if samples_seen else math.nan,
    )


def _scalar_loss(value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"loss must return a scalar tensor (the batch's mean), got {shape}")
    return value.reshape(())


def _add_proximal_gradient(parameters: list[nn.Parameter], anchors: list[torch.Tensor], mu: float) -> None:
    """Add the gradient of ``mu/2 · ||w − anchor||²``, which is ``mu · (w − anchor)``, to each parameter."""
    with torch.no_grad():
        for parameter, anchor in zip(parameters, anchors, strict=True):
            pull = (parameter - anchor).mul_(mu)
            if parameter.grad is None:
                parameter.grad = pull
            else:
                parameter.grad.add_(pull)


def evaluate(
    model: nn.Module,
    features: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    batch_size: int = 512,
    loss: LossFunction | None = None,
) -> Evaluation:
    """Loss, accuracy and macro F1 of ``model`` on labelled samples; the model is not changed.

    ``loss`` is as in :class:`LocalTrainingConfig` (None: cross-entropy on class indices); its batch means are
    weighted by batch size. With a custom loss, accuracy and macro F1 are measured only when the targets are
    integer class indices within the model's outputs (samples, classes); for a regression they are NaN.
    Macro F1 averages the per-class F1 over the classes that occur in the labels or the predictions.
    """
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an int ≥ 1, got {batch_size!r} ({type(batch_size).__name__})")
    if loss is not None and not callable(loss):
        raise ValueError(f"loss must be None or a callable (outputs, targets) -> tensor, got {loss!r}")
    device = _model_device(model)
    inputs, targets = _as_tensors(features, labels, device, class_indices=loss is None)
    was_training = model.training
    model.eval()
    loss_sum = 0.0
    predictions = []
    classified = True
    try:
        with torch.no_grad():
            for begin in range(0, inputs.shape[0], batch_size):
                logits = model(inputs[begin : begin + batch_size])
                batch_targets = targets[begin : begin + batch_size]
                if loss is not None:
                    loss_sum += float(_scalar_loss(loss(logits, batch_targets))) * int(batch_targets.shape[0])
                    classified = classified and _are_class_scores(logits, batch_targets)
                    if classified:
                        predictions.append(logits.argmax(dim=1).cpu())
                    continue
                if int(batch_targets.max()) >= logits.shape[1]:
                    raise ValueError(
                        f"label {int(batch_targets.max())} is out of range for a model with {logits.shape[1]} classes"
                    )
                loss_sum += float(functional.cross_entropy(logits, batch_targets, reduction="sum"))
                predictions.append(logits.argmax(dim=1).cpu())
    finally:
        model.train(was_training)
    actual = targets.cpu().numpy()
    count = int(actual.shape[0])
    if not classified:
        return Evaluation(loss=loss_sum / count, accuracy=math.nan, macro_f1=math.nan, count=count)
    predicted = torch.cat(predictions).numpy()
    return Evaluation(
        loss=loss_sum / count,
        accuracy=float(np.mean(predicted == actual)),
        macro_f1=_macro_f1(actual, predicted),
        count=count,
    )


def _are_class_scores(outputs: torch.Tensor, targets: torch.Tensor) -> bool:
    """True when ``outputs`` are (samples, classes) scores and ``targets`` class indices among them."""
    return (
        outputs.ndim == 2
        and targets.ndim == 1
        and not targets.is_floating_point()
        and int(targets.min()) >= 0
        and int(targets.max()) < outputs.shape[1]
    )


def _macro_f1(actual: npt.NDArray[np.int64], predicted: npt.NDArray[np.int64]) -> float:
    classes = np.union1d(actual, predicted)
    scores = []
    for label in classes:
        true_positive = int(np.sum((predicted == label) & (actual == label)))
        false_positive = int(np.sum((predicted == label) & (actual != label)))
        false_negative = int(np.sum((predicted != label) & (actual == label)))
        denominator = 2 * true_positive + false_positive + false_negative
        scores.append(2 * true_positive / denominator if denominator else 0.0)
    return float(np.mean(scores))
