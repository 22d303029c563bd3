"""Model registry and the conversion between a torch module and the named float32 arrays updates carry.

Models here avoid BatchNorm: its running statistics are buffers that describe one client's data and do not
average meaningfully across clients, so normalisation is GroupNorm (no running state) or none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from torch import nn

from schemas.tensors import Tensors

__all__ = [
    "MIN_CNN_WINDOW",
    "TABLE_CNN",
    "TABLE_MLP",
    "HarCnn",
    "TableMlp",
    "available_models",
    "build_model",
    "load_model_weights",
    "model_weights",
    "parameter_count",
    "register_model",
    "table_model",
    "weight_problems",
]

ModelBuilder = Callable[[], nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a zero-argument builder under ``name`` (a decorator); names are unique."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a non-empty str, got {name!r} ({type(name).__name__})")

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorate


def available_models() -> tuple[str, ...]:
    """Names :func:`build_model` accepts, sorted."""
    return tuple(sorted(_REGISTRY))


def build_model(name: str, seed: int) -> nn.Module:
    """Build model ``name`` with parameters initialised deterministically from ``seed``.

    The same name and seed give identical weights on every client, so a federation can start from an
    agreed initial model without sending it. The global torch random state is left as it was.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(available_models())}")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise ValueError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
    return _seeded(_REGISTRY[name], int(seed))


def _seeded(builder: ModelBuilder, seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder()


def parameter_count(module: nn.Module) -> int:
    """Number of trainable scalars in ``module``."""
    return sum(parameter.numel() for parameter in module.parameters() if parameter.requires_grad)


class HarCnn(nn.Module):
    """1-D CNN for human activity recognition on (batch, channels, time) windows.

    Three convolution blocks (kernel 7, 5, 5; 64, 96, 128 filters; GroupNorm and ReLU; max-pooling after
    the first two), global average pooling over time, then a 128→64→classes head: about 104k parameters
    for 6 channels and 6 classes. Global pooling makes it accept any window length ≥ 4.
    """

    def __init__(self, in_channels: int = 6, num_classes: int = 6, groups: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(in_channels, 64, kernel_size=7, padding=3),
            nn.GroupNorm(groups, 64),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(64, 96, kernel_size=5, padding=2),
            nn.GroupNorm(groups, 96),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(96, 128, kernel_size=5, padding=2),
            nn.GroupNorm(groups, 128),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        """Class logits of shape (batch, num_classes)."""
        logits: torch.Tensor = self.classifier(self.features(windows))
        return logits


@register_model("har-cnn")
def _build_har_cnn() -> nn.Module:
    return HarCnn(in_channels=6, num_classes=6)


class TableMlp(nn.Module):
    """A small MLP for rows of a table: features → hidden → hidden → classes, ReLU between."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Class logits of shape (batch, num_classes)."""
        logits: torch.Tensor = self.classifier(self.body(features))
        return logits


TABLE_CNN = "table-cnn"
"""Model name of :func:`table_model` over windows: a :class:`HarCnn` sized to the table."""
TABLE_MLP = "table-mlp"
"""Model name of :func:`table_model` over rows: a :class:`TableMlp` sized to the table."""
MIN_CNN_WINDOW = 4
"""The shortest window :class:`HarCnn` takes: its two max-poolings halve the length twice."""


def table_model(sample_shape: tuple[int, ...], num_classes: int, seed: int) -> tuple[str, nn.Module]:
    """A model name and module that fit samples of ``sample_shape``, seeded as :func:`build_model` seeds.

    Windows ``(channels, window)`` get :class:`HarCnn` (window ≥ 4); rows ``(features,)`` get
    :class:`TableMlp`. Every client builds the same module from the same shape, class count and seed.
    """
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    if len(sample_shape) == 2:
        channels, window = sample_shape
        if window < MIN_CNN_WINDOW:
            raise ValueError(f"the CNN over windows needs windows of at least {MIN_CNN_WINDOW} samples, got {window}")
        return TABLE_CNN, _seeded(lambda: HarCnn(in_channels=channels, num_classes=num_classes), seed)
    if len(sample_shape) == 1:
        return TABLE_MLP, _seeded(lambda: TableMlp(sample_shape[0], num_classes), seed)
    raise ValueError(f"no model for samples of shape {sample_shape}: rows (features,) or windows (channels, window)")


def model_weights(module: nn.Module) -> Tensors:
    """The module's floating-point parameters and buffers as float32 copies, in ``state_dict`` order.

    Integer buffers (counters and the like) are not model weights and are left out.
    """
    return {
        name: tensor.detach().cpu().to(torch.float32).numpy().copy()
        for name, tensor in module.state_dict().items()
        if tensor.is_floating_point()
    }


def weight_problems(module: nn.Module, weights: Mapping[str, object]) -> list[str]:
    """Every way ``weights`` fails to fit ``module`` (missing, unexpected, wrong shape, not finite)."""
    expected = {name: tuple(tensor.shape) for name, tensor in module.state_dict().items() if tensor.is_floating_point()}
    problems = [f"missing {name!r} {shape}" for name, shape in expected.items() if name not in weights]
    problems += [f"unexpected {name!r}" for name in weights if name not in expected]
    for name, shape in expected.items():
        if name not in weights:
            continue
        value = weights[name]
        if not isinstance(value, np.ndarray | torch.Tensor):
            problems.append(f"{name!r} is a {type(value).__name__}, not an array")
            continue
        if tuple(value.shape) != shape:
            problems.append(f"{name!r} has shape {tuple(value.shape)}, expected {shape}")
            continue
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        if not np.issubdtype(array.dtype, np.floating):
            problems.append(f"{name!r} has dtype {array.dtype}, expected a floating-point dtype")
        elif not bool(np.isfinite(array).all()):
            problems.append(f"{name!r} holds NaN or infinite values")
    return problems


def load_model_weights(module: nn.Module, weights: Mapping[str, object]) -> None:
    """Copy ``weights`` (as from :func:`model_weights`) into ``module`` in place.

    Names, shapes and dtypes are checked first and nothing is copied unless all fit: a ValueError lists
    every problem.
    """
    problems = weight_problems(module, weights)
    if problems:
        raise ValueError(
            f"weights do not fit {type(module).__name__} ({len(problems)} problems): " + "; ".join(problems)
        )
    state = module.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            if tensor.is_floating_point():
                value = weights[name]
                source = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
                tensor.copy_(source.to(device=tensor.device, dtype=tensor.dtype))
