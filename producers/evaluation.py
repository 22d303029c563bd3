"""Central evaluation of global versions on subjects that never trained: how well the model generalises."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from torch import nn

from producers.data.hapt import ClientDataset
from producers.models import load_model_weights
from producers.training import Evaluation, evaluate
from schemas.tensors import Tensors


class HeldOutEvaluator:
    """Evaluates parameters on the pooled windows of held-out subjects (each standardised on its own data)."""

    def __init__(self, model: nn.Module, held_out: dict[int, ClientDataset]) -> None:
        if not held_out:
            raise ValueError("no held-out subjects to evaluate on")
        self.model = model
        self.subjects = sorted(held_out)
        self.features: npt.NDArray[np.float32] = np.concatenate(
            [np.concatenate([data.train.windows, data.validation.windows]) for data in held_out.values()]
        )
        self.labels: npt.NDArray[np.int64] = np.concatenate(
            [np.concatenate([data.train.labels, data.validation.labels]) for data in held_out.values()]
        )

    def evaluate(self, parameters: Tensors) -> Evaluation:
        """Loss, accuracy and macro-F1 of ``parameters`` on the held-out windows."""
        load_model_weights(self.model, parameters)
        return evaluate(self.model, self.features, self.labels)
