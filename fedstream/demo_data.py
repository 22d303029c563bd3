"""What the demo trains and evaluates on: UCI HAPT's subjects, or those of your own table, and the model that fits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from torch import nn

    from producers.client import LocalData


@dataclass(frozen=True)
class TableSource:
    """Your own table for the demo: ``--table`` and the options that say how to read it."""

    path: Path
    subject_column: str
    label_column: str
    feature_columns: tuple[str, ...] | None = None
    order_column: str | None = None
    """With ``window``: samples in rows, cut into windows in this order (otherwise each row is a sample)."""
    window: int | None = None
    step: int | None = None
    sequence_column: str | None = None
    held_out_subjects: tuple[str, ...] | None = None
    """Subjects (as written) kept out of training; None: a seeded fifth of them, at least one."""


@dataclass(frozen=True)
class DemoData:
    """What the demo trains and evaluates on: training clients and held-out subjects, and the model that fits."""

    title: str
    """What the data is, in a few words: the plot's title names it."""
    description: str
    training: dict[str, LocalData]
    """Client id → that device's own data."""
    held_out: dict[str, tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]]
    """Held-out subject → all its samples and labels (each subject prepared with its own statistics)."""
    model_name: str
    sample_shape: tuple[int, ...]
    num_classes: int

    def build(self, seed: int) -> nn.Module:
        """The demo's model with weights seeded by ``seed`` (the same on every device)."""
        from producers.models import available_models, build_model, table_model

        if self.model_name in available_models():  # UCI HAPT's registered CNN
            return build_model(self.model_name, seed)
        return table_model(self.sample_shape, self.num_classes, seed)[1]


def hapt_data(held_out_subjects: tuple[int, ...], model_name: str) -> DemoData:
    """UCI HAPT's subjects: each training subject a device, ``held_out_subjects`` only ever evaluated."""
    import numpy as np

    from producers.client import LocalData
    from producers.data.hapt import ACTIVITY_NAMES, load_hapt_clients

    clients_data = load_hapt_clients()
    held_out = {subject: clients_data.pop(subject) for subject in held_out_subjects}
    return DemoData(
        title="UCI HAPT",
        description="UCI HAPT",
        training={
            f"subject-{subject:02d}": LocalData(
                data.train.windows, data.train.labels, data.validation.windows, data.validation.labels
            )
            for subject, data in sorted(clients_data.items())
        },
        held_out={
            str(subject): (
                np.concatenate([data.train.windows, data.validation.windows]),
                np.concatenate([data.train.labels, data.validation.labels]),
            )
            for subject, data in sorted(held_out.items())
        },
        model_name=model_name,
        sample_shape=tuple(next(iter(clients_data.values())).train.windows.shape[1:]),
        num_classes=len(ACTIVITY_NAMES),
    )


def load_table_data(source: TableSource, seed: int = 0) -> DemoData:
    """``source``'s subjects as training devices and held-out subjects, with the model that fits them.

    Raises :class:`producers.data.tables.TableFormatError` naming the column and the problem when the table
    cannot be used (and FileNotFoundError when there is no table): the CLI checks this before starting anything.
    """
    import numpy as np

    from producers.client import LocalData
    from producers.data.tables import TableFormatError, label_vocabulary, read_table, table_clients
    from producers.data.windows import window_clients
    from producers.models import MIN_CNN_WINDOW, table_model

    frame = read_table(source.path)
    features = None if source.feature_columns is None else list(source.feature_columns)
    if source.window is not None:
        if source.order_column is None:
            raise TableFormatError("--window needs --order-column: the column that orders the samples")
        if isinstance(source.window, int) and 0 < source.window < MIN_CNN_WINDOW:
            raise TableFormatError(
                f"--window {source.window} is too short: the CNN over windows needs at least {MIN_CNN_WINDOW} rows"
            )
        clients = window_clients(
            frame,
            subject_column=source.subject_column,
            label_column=source.label_column,
            order_column=source.order_column,
            window=source.window,
            step=source.step,
            sequence_column=source.sequence_column,
            feature_columns=features,
        )
    else:
        clients = table_clients(
            frame,
            subject_column=source.subject_column,
            label_column=source.label_column,
            feature_columns=features,
            seed=seed,
        )
    classes = label_vocabulary(frame, source.label_column)
    if len(classes) < 2:
        raise TableFormatError(
            f"label column {source.label_column!r} has {len(classes)} distinct value(s): a classifier needs 2 or more"
        )
    if len(clients) < 2:
        raise TableFormatError(
            f"subject column {source.subject_column!r} has {len(clients)} usable subject(s): the demo needs at "
            "least 2, one to train and one held out"
        )
    held = set(_held_out_subjects(source, list(clients), seed))
    ids = _client_ids([subject for subject in clients if subject not in held])
    sample_shape = tuple(next(iter(clients.values())).train_features.shape[1:])
    shape_text = (
        f"windows of {source.window} rows every {source.step or source.window} over {sample_shape[0]} channels"
        if source.window is not None
        else f"rows of {sample_shape[0]} features"
    )
    return DemoData(
        title=source.path.name,
        description=f"table {source.path.name} ({shape_text}, {len(classes)} classes)",
        training={
            ids[subject]: LocalData(
                client.train_features, client.train_labels, client.validation_features, client.validation_labels
            )
            for subject, client in clients.items()
            if subject not in held
        },
        held_out={
            str(subject): (
                np.concatenate([client.train_features, client.validation_features]),
                np.concatenate([client.train_labels, client.validation_labels]),
            )
            for subject, client in clients.items()
            if subject in held
        },
        model_name=table_model(sample_shape, len(classes), seed)[0],
        sample_shape=sample_shape,
        num_classes=len(classes),
    )


def _held_out_subjects(source: TableSource, subjects: list[Any], seed: int) -> list[Any]:
    """The subjects named in ``source`` (matched as written), or a seeded fifth of them, at least one."""
    import numpy as np

    from producers.data.tables import TableFormatError

    if source.held_out_subjects is None:
        count = max(1, round(0.2 * len(subjects)))
        picks = np.random.default_rng(seed).choice(len(subjects), size=count, replace=False)
        return [subjects[index] for index in sorted(picks)]
    by_name = {str(subject): subject for subject in subjects}
    unknown = [name for name in source.held_out_subjects if name not in by_name]
    if unknown:
        raise TableFormatError(
            f"held-out subjects {unknown} are not usable subjects of column {source.subject_column!r} "
            f"(those are {sorted(by_name)[:20]})"
        )
    if len(set(source.held_out_subjects)) >= len(subjects):
        raise TableFormatError(
            f"--held-out-subjects names every subject of column {source.subject_column!r}: none is left to train"
        )
    return [by_name[name] for name in source.held_out_subjects]


def _client_ids(subjects: list[Any]) -> dict[Any, str]:
    """A device id per subject that the update headers accept: ``subject-<name>``, made unique."""
    import re

    ids: dict[Any, str] = {}
    for subject in subjects:
        name = re.sub(r"[^a-z0-9._-]+", "-", str(subject).lower()).strip("-")[:48] or "x"
        client_id, suffix = f"subject-{name}", 2
        while client_id in ids.values():
            client_id, suffix = f"subject-{name}-{suffix}", suffix + 1
        ids[subject] = client_id
    return ids


class HeldOutEvaluator:
    """Evaluates parameters on the pooled samples of the held-out subjects, and on each subject alone."""

    def __init__(
        self, model: nn.Module, held_out: dict[str, tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]]
    ) -> None:
        import numpy as np

        if not held_out:
            raise ValueError("no held-out subjects to evaluate on")
        self.model = model
        self.held_out = held_out
        self.features = np.concatenate([features for features, _ in held_out.values()])
        self.labels = np.concatenate([labels for _, labels in held_out.values()])

    def evaluate(self, parameters: Any) -> Any:
        """Loss, accuracy and macro-F1 of ``parameters`` on every held-out sample."""
        from producers.models import load_model_weights
        from producers.training import evaluate

        load_model_weights(self.model, parameters)
        return evaluate(self.model, self.features, self.labels)
