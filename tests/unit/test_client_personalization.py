"""``FederatedClient``'s personalization: personal layers that never leave the device, and local fine-tuning.

The job checks every update against the global model's names and shapes (``schemas.validation``); with personal
layers the global model is the shared parameters only, so the updates here are checked the job's way too.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

import producers.client
from producers.client import FederatedClient, LocalData, PersonalLayersInGlobalModelError
from producers.models import model_weights, table_model
from producers.personalization import HAR_CNN_HEAD, shared_model_weights, split_weights
from producers.training import LocalTrainingConfig
from schemas.messages import ModelHeader
from schemas.rejections import RejectionReason
from schemas.tensors import Tensors
from schemas.validation import validate_update
from schemas.wire import DecodedModel, DecodedUpdate, decode_update

CLIENT = "c-0123456789abcdef"
MODEL = "table-mlp"
HEAD = HAR_CNN_HEAD  # ``TableMlp``'s head is ``classifier.`` too
TRAINING = LocalTrainingConfig(epochs=2, learning_rate=0.05, seed=1)
FINE_TUNING = LocalTrainingConfig(epochs=3, learning_rate=0.05, seed=2)


def _data(seed: int = 0) -> LocalData:
    generator = np.random.default_rng(seed)
    features = generator.standard_normal((80, 8)).astype(np.float32)
    labels = (features[:, 0] + 0.5 * features[:, 1] > 0).astype(np.int64) + (features[:, 2] > 1).astype(np.int64)
    return LocalData(features[:60], labels[:60], features[60:], labels[60:])


def _client(**options: Any) -> FederatedClient:
    _, model = table_model((8,), 3, seed=0)
    return FederatedClient(CLIENT, MODEL, model, _data(), TRAINING, **options)


def _version(parameters: Tensors, version: int = 0) -> DecodedModel:
    header = ModelHeader(
        model_name=MODEL,
        version=version,
        parent_version=None if version == 0 else version - 1,
        parent_parameter_hash=None if version == 0 else "ab" * 32,
        parameter_hash="cd" * 32,
        payload_sha256="ef" * 32,
        created_at=datetime.now(UTC),
    )
    return DecodedModel(header=header, parameters=parameters)


def _initial_shared() -> Tensors:
    """The job's version 0 when devices keep the head: the model without it."""
    return shared_model_weights(table_model((8,), 3, seed=0)[1], HEAD)


def _sent(prepared: producers.client.PreparedUpdate) -> DecodedUpdate:
    decoded = decode_update(prepared.value, CLIENT.encode())
    assert isinstance(decoded, DecodedUpdate), decoded
    return decoded


def test_personal_layers_never_appear_in_the_update_and_the_job_accepts_it() -> None:
    client = _client(personal_prefixes=HEAD)
    shared = _initial_shared()
    assert shared and not any(name.startswith("classifier.") for name in shared)
    update = _sent(client.prepare_update(_version(shared)))
    assert set(update.delta) == set(shared)
    problems = validate_update(update, model_name=MODEL, reference=shared, current_version=0, max_staleness=None)
    assert problems == []
    whole = model_weights(table_model((8,), 3, seed=0)[1])  # a job started from the whole model refuses it
    refused = validate_update(update, model_name=MODEL, reference=whole, current_version=0, max_staleness=None)
    assert [problem.reason for problem in refused] == [RejectionReason.SHAPE_MISMATCH]


def test_the_client_keeps_its_personal_layers_across_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    client = _client(personal_prefixes=HEAD)
    initial = client.personal_weights
    starts: list[Tensors] = []
    real_training = producers.client.train_locally

    def recording(model: Any, *args: Any, **kwargs: Any) -> Any:
        starts.append(model_weights(model))
        return real_training(model, *args, **kwargs)

    monkeypatch.setattr(producers.client, "train_locally", recording)
    version_0 = _initial_shared()
    first = _sent(client.prepare_update(_version(version_0)))
    after_first = client.personal_weights
    assert set(after_first) == set(initial) == {"classifier.weight", "classifier.bias"}
    assert any(not np.array_equal(after_first[name], initial[name]) for name in initial), "the head trained"

    version_1 = {name: value + first.delta[name] for name, value in version_0.items()}
    second = _sent(client.prepare_update(_version(version_1, 1)))
    start_shared, start_personal = split_weights(starts[1], HEAD)
    for name, value in version_1.items():  # the second round starts from version 1's shared parameters ...
        np.testing.assert_array_equal(start_shared[name], value)
    for name, value in after_first.items():  # ... and the head this device trained, not the version's
        np.testing.assert_array_equal(start_personal[name], value)
    trained = split_weights(model_weights(client.model), HEAD)[0]
    for name, value in version_1.items():
        np.testing.assert_allclose(second.delta[name], trained[name] - value, atol=1e-6)
    assert second.header.base_version == 1


def test_fine_tuning_changes_only_the_local_copy() -> None:
    tuned = _client(fine_tuning=FINE_TUNING)
    plain = _client()
    version = _version(model_weights(table_model((8,), 3, seed=0)[1]))
    before = model_weights(tuned.model)
    local = tuned.personalized_weights(version)
    assert set(local) == set(version.parameters)
    assert any(not np.array_equal(local[name], version.parameters[name]) for name in local), "it fine-tuned"
    for name, value in model_weights(tuned.model).items():  # the model that makes updates is untouched
        np.testing.assert_array_equal(value, before[name])
    sent, expected = _sent(tuned.prepare_update(version)), _sent(plain.prepare_update(version))
    for name, value in expected.delta.items():  # nothing of the fine-tuning travels
        np.testing.assert_array_equal(sent.delta[name], value)
    unchanged = plain.personalized_weights(version)  # neither option: the version as received
    assert set(unchanged) == set(version.parameters)
    for name, value in version.parameters.items():
        np.testing.assert_array_equal(unchanged[name], value)


def test_the_evaluation_returns_the_global_and_the_personalized_accuracy() -> None:
    client = _client(personal_prefixes=HEAD, fine_tuning=FINE_TUNING)
    version = _version(_initial_shared())
    client.prepare_update(version)
    comparison = client.evaluate_personalization(version)
    validation_count = len(client.data.validation_labels)
    for evaluation in (comparison.global_evaluation, comparison.personalized_evaluation):
        assert evaluation.count == validation_count and 0.0 <= evaluation.accuracy <= 1.0
    assert comparison.client_id == CLIENT
    assert comparison.personalized_evaluation.loss != comparison.global_evaluation.loss

    plain = _client()
    whole = _version(model_weights(table_model((8,), 3, seed=0)[1]))
    same = plain.evaluate_personalization(whole)
    assert same.global_evaluation == same.personalized_evaluation  # no personalization: one model, twice


def test_the_global_figure_uses_the_personal_layers_given_for_it() -> None:
    client = _client(personal_prefixes=HEAD)
    version = _version(_initial_shared())
    client.prepare_update(version)
    own = client.evaluate_personalization(version, global_personal=client.personal_weights)
    assert own.global_evaluation == own.personalized_evaluation
    default = client.evaluate_personalization(version)  # the head every device started from
    assert default.global_evaluation != default.personalized_evaluation


@pytest.mark.parametrize(
    ("prefixes", "message"),
    [
        (("head.",), "match no parameter"),
        ("classifier.", "sequence of strings"),
        (("",), "non-empty strings"),
        (("classifier.", 3), "non-empty strings"),
        (("body.", "classifier."), "nothing is shared"),
    ],
)
def test_bad_prefixes_are_refused_with_the_reason(prefixes: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _client(personal_prefixes=prefixes)


def test_a_global_version_that_carries_the_personal_layers_is_refused() -> None:
    client = _client(personal_prefixes=HEAD)
    whole = _version(model_weights(table_model((8,), 3, seed=0)[1]), 3)
    with pytest.raises(PersonalLayersInGlobalModelError, match=r"version 3 .*classifier\.bias.*shared_model_weights"):
        client.prepare_update(whole)
    with pytest.raises(PersonalLayersInGlobalModelError):
        client.evaluate_personalization(whole)


def test_fine_tuning_must_be_a_training_config() -> None:
    with pytest.raises(ValueError, match="LocalTrainingConfig"):
        _client(fine_tuning={"epochs": 1})
