"""Build a client update message from a model delta: header, safetensors payload, hash."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

import numpy as np
import numpy.typing as npt

from schemas.messages import ClientMetrics, UpdateHeader
from schemas.tensors import Tensors
from schemas.wire import Signer, encode_update, tensors_payload


def model_delta(local: Mapping[str, npt.NDArray[np.float32]], base: Mapping[str, npt.NDArray[np.float32]]) -> Tensors:
    """``Δ = θ_local − θ_base`` for every parameter the global model has."""
    missing = sorted(set(base) - set(local))
    if missing:
        raise ValueError(f"the local model lacks global parameters {missing[:5]}")
    return {name: (local[name] - base[name]).astype(np.float32) for name in base}


def build_update(
    *,
    client_id: str,
    model_name: str,
    base_version: int,
    sample_count: int,
    delta: Mapping[str, npt.NDArray[np.float32]],
    metrics: ClientMetrics | None = None,
    update_id: str | None = None,
    signer: Signer | None = None,
) -> tuple[UpdateHeader, bytes]:
    """Return the header and the encoded ``fl.updates`` value of one update, signed by ``signer``."""
    payload, payload_hash = tensors_payload(delta)
    header = UpdateHeader(
        update_id=update_id or uuid.uuid4().hex,
        client_id=client_id,
        model_name=model_name,
        base_version=base_version,
        sample_count=sample_count,
        created_at=datetime.now(UTC),
        payload_sha256=payload_hash,
        metrics=metrics or ClientMetrics(),
    )
    return header, encode_update(header, payload, signer)
