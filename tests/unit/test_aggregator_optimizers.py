import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from aggregator import (
    InvalidConfigError,
    InvalidStateError,
    ServerAdagrad,
    ServerAdam,
    ServerOptimizer,
    ServerSGD,
    ServerYogi,
    ShapeMismatchError,
    make_server_optimizer,
)
from schemas.tensors import Tensors

# Shared two-element example: theta = [1, 2], delta = [0.1, -0.2], so g = -delta = [-0.1, 0.2], g^2 = [0.01, 0.04].
THETA: Tensors = {"w": np.array([1.0, 2.0], dtype=np.float32)}
DELTA: Tensors = {"w": np.array([0.1, -0.2], dtype=np.float32)}


def weights(*values: float) -> Tensors:
    return {"w": np.array(values, dtype=np.float32)}


def assert_weights_close(actual: Tensors, expected: Tensors, rtol: float = 1e-6) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        assert actual[key].dtype == np.float32
        np.testing.assert_allclose(actual[key], expected[key], rtol=rtol, atol=1e-7)


def assert_weights_equal(actual: Tensors, expected: Tensors) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(actual[key], expected[key])


# ---------------------------------------------------------------- SGD / FedAvgM


def test_sgd_step_hand_computed() -> None:
    # theta - lr * g = [1, 2] - 0.5 * [-0.1, 0.2] = [1.05, 1.9]
    optimizer = ServerSGD(learning_rate=0.5)
    assert_weights_close(optimizer.step(THETA, DELTA), weights(1.05, 1.9))
    assert optimizer.name == "sgd"
    assert optimizer.state_dict().keys() == {"step"}


def test_sgd_with_learning_rate_one_adds_the_delta() -> None:
    # theta + delta = [1.1, 1.8]
    assert_weights_close(ServerSGD(learning_rate=1.0).step(THETA, DELTA), weights(1.1, 1.8))


def test_momentum_two_steps_hand_computed() -> None:
    optimizer = ServerSGD(learning_rate=0.5, momentum=0.9)
    assert optimizer.name == "momentum"
    # step 1: v = 0.9 * 0 + g = [-0.1, 0.2];   theta = [1, 2] - 0.5 * v = [1.05, 1.9]
    first = optimizer.step(THETA, DELTA)
    assert_weights_close(first, weights(1.05, 1.9))
    np.testing.assert_allclose(optimizer.state_dict()["v/w"], [-0.1, 0.2], rtol=1e-6)
    # step 2: v = 0.9 * [-0.1, 0.2] + [-0.1, 0.2] = [-0.19, 0.38]
    #         theta = [1.05, 1.9] - 0.5 * [-0.19, 0.38] = [1.145, 1.71]
    second = optimizer.step(first, DELTA)
    assert_weights_close(second, weights(1.145, 1.71))
    np.testing.assert_allclose(optimizer.state_dict()["v/w"], [-0.19, 0.38], rtol=1e-6)


def test_momentum_zero_matches_plain_sgd_over_several_steps() -> None:
    plain = ServerSGD(learning_rate=1.0)
    with_zero_momentum = make_server_optimizer("sgd", 1.0, momentum=0.0)
    params_a, params_b = THETA, THETA
    for scale in (1.0, -0.5, 2.0):
        delta = {"w": DELTA["w"] * np.float32(scale)}
        params_a = plain.step(params_a, delta)
        params_b = with_zero_momentum.step(params_b, delta)
    assert_weights_equal(params_a, params_b)


# ---------------------------------------------------------------- Adam


def test_adam_one_step_hand_computed() -> None:
    # lr = 0.1, beta1 = 0.9, beta2 = 0.99, tau = 1e-3; m0 = 0, v0 = tau^2 = 1e-6
    # m = 0.9 * 0 + 0.1 * g                 = [-0.01, 0.02]
    # v = 0.99 * 1e-6 + 0.01 * [0.01, 0.04] = [1.0099e-4, 4.0099e-4]
    # sqrt(v) = [0.0100494, 0.0200247];  + tau = [0.0110494, 0.0210247]
    # m / (sqrt(v) + tau) = [-0.905029, 0.951260]
    # theta = [1, 2] - 0.1 * that = [1.0905029, 1.9048740]
    optimizer = ServerAdam(learning_rate=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    assert_weights_close(optimizer.step(THETA, DELTA), weights(1.0905029, 1.9048740))
    state = optimizer.state_dict()
    np.testing.assert_allclose(state["m/w"], [-0.01, 0.02], rtol=1e-6)
    np.testing.assert_allclose(state["v/w"], [1.0099e-4, 4.0099e-4], rtol=1e-6)
    assert int(state["step"]) == 1


def test_adam_second_step_hand_computed() -> None:
    optimizer = ServerAdam(learning_rate=0.1)
    first = optimizer.step(THETA, DELTA)
    # m = 0.9 * [-0.01, 0.02] + 0.1 * [-0.1, 0.2]              = [-0.019, 0.038]
    # v = 0.99 * [1.0099e-4, 4.0099e-4] + 0.01 * [0.01, 0.04] = [1.999801e-4, 7.969801e-4]
    # sqrt(v) + tau = [0.0141414 + 0.001, 0.0282308 + 0.001]   = [0.0151414, 0.0292308]
    # m / that = [-1.254838, 1.299999];  theta = first - 0.1 * that
    #          = [1.0905029 + 0.1254838, 1.9048740 - 0.1300000] = [1.2159867, 1.7748740]
    assert_weights_close(optimizer.step(first, DELTA), weights(1.2159867, 1.7748740), rtol=2e-6)
    np.testing.assert_allclose(optimizer.state_dict()["v/w"], [1.999801e-4, 7.969801e-4], rtol=1e-6)


# ---------------------------------------------------------------- Yogi


def test_yogi_one_step_hand_computed() -> None:
    # Same inputs as Adam. v0 = 1e-6 < g^2, so sign(v0 - g^2) = -1 and v grows by (1 - beta2) g^2:
    # v = 1e-6 + 0.01 * [0.01, 0.04] = [1.01e-4, 4.01e-4]     (Adam had 1.0099e-4: it decays v0)
    # sqrt(v) + tau = [0.01004988 + 0.001, 0.02002498 + 0.001] = [0.01104988, 0.02102498]
    # m / that = [-0.904988, 0.951249];  theta = [1.0904988, 1.9048751]
    optimizer = ServerYogi(learning_rate=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    assert_weights_close(optimizer.step(THETA, DELTA), weights(1.0904988, 1.9048751))
    np.testing.assert_allclose(optimizer.state_dict()["v/w"], [1.01e-4, 4.01e-4], rtol=1e-6)


def test_yogi_both_sign_branches_differ_from_adam() -> None:
    # lr = 1, beta1 = 0, beta2 = 0.5, tau = 0.1: v0 = 0.01, m = g.
    # delta = [-0.3, 0.05] -> g = [0.3, -0.05], g^2 = [0.09, 0.0025]
    # Yogi: sign(0.01 - g^2) = [-1, +1]; v = 0.01 - 0.5 * g^2 * sign = [0.01 + 0.045, 0.01 - 0.00125]
    #                                                                 = [0.055, 0.00875]
    #       theta = 0 - g / (sqrt(v) + 0.1) = [-0.3 / 0.3345208, 0.05 / 0.1935414] = [-0.896805, 0.258343]
    # Adam: v = 0.5 * 0.01 + 0.5 * g^2 = [0.05, 0.00625]
    #       theta = [-0.3 / 0.3236068, 0.05 / 0.1790569] = [-0.927051, 0.279241]
    zero = weights(0.0, 0.0)
    delta = weights(-0.3, 0.05)
    yogi = ServerYogi(learning_rate=1.0, beta1=0.0, beta2=0.5, tau=0.1)
    adam = ServerAdam(learning_rate=1.0, beta1=0.0, beta2=0.5, tau=0.1)
    assert_weights_close(yogi.step(zero, delta), weights(-0.896805, 0.258343), rtol=2e-6)
    np.testing.assert_allclose(yogi.state_dict()["v/w"], [0.055, 0.00875], rtol=1e-6)
    assert_weights_close(adam.step(zero, delta), weights(-0.927051, 0.279241), rtol=2e-6)


# ---------------------------------------------------------------- Adagrad


def test_adagrad_one_step_hand_computed() -> None:
    # lr = 0.1, tau = 1e-3, no first-moment decay (m = g); v0 = tau^2 = 1e-6
    # v = 1e-6 + [0.01, 0.04] = [0.010001, 0.040001]
    # sqrt(v) + tau = [0.100005 + 0.001, 0.2000025 + 0.001] = [0.101005, 0.2010025]
    # g / that = [-0.990050, 0.995013];  theta = [1, 2] - 0.1 * that = [1.0990050, 1.9004987]
    optimizer = ServerAdagrad(learning_rate=0.1, tau=1e-3)
    assert_weights_close(optimizer.step(THETA, DELTA), weights(1.0990050, 1.9004987))
    np.testing.assert_allclose(optimizer.state_dict()["v/w"], [0.010001, 0.040001], rtol=1e-6)


def test_adagrad_accumulates_squares() -> None:
    optimizer = ServerAdagrad(learning_rate=0.1, tau=1e-3)
    params = optimizer.step(THETA, DELTA)
    optimizer.step(params, DELTA)
    # v = 1e-6 + 2 * [0.01, 0.04] = [0.020001, 0.080001]: never decays
    np.testing.assert_allclose(optimizer.state_dict()["v/w"], [0.020001, 0.080001], rtol=1e-6)


# ---------------------------------------------------------------- interface


def all_optimizers() -> list[ServerOptimizer]:
    return [
        ServerSGD(0.7),
        ServerSGD(0.7, momentum=0.9),
        ServerAdam(0.05),
        ServerYogi(0.05),
        ServerAdagrad(0.05),
    ]


MODEL: Tensors = {
    "layer.weight": np.arange(6, dtype=np.float32).reshape(2, 3) / 10,
    "layer.bias": np.array([0.5, -0.5], dtype=np.float32),
}


def model_delta(seed: int) -> Tensors:
    rng = np.random.default_rng(seed)
    return {key: rng.normal(0, 0.1, size=value.shape).astype(np.float32) for key, value in MODEL.items()}


@pytest.mark.parametrize("optimizer", all_optimizers(), ids=lambda o: o.name)
def test_step_is_pure_on_its_inputs(optimizer: ServerOptimizer) -> None:
    params = {key: value.copy() for key, value in MODEL.items()}
    delta = model_delta(0)
    delta_before = {key: value.copy() for key, value in delta.items()}
    new_params = optimizer.step(params, delta)
    assert_weights_equal(params, MODEL)
    assert_weights_equal(delta, delta_before)
    assert all(new_params[key] is not params[key] for key in params)
    assert all(value.dtype == np.float32 for value in new_params.values())


@pytest.mark.parametrize("optimizer", all_optimizers(), ids=lambda o: o.name)
def test_state_round_trips_and_continuing_gives_identical_results(optimizer: ServerOptimizer) -> None:
    params = MODEL
    for seed in range(3):
        params = optimizer.step(params, model_delta(seed))
    saved = optimizer.state_dict()
    restored = make_server_optimizer(optimizer.name, optimizer.learning_rate)
    restored.load_state_dict(saved)
    assert restored.step_count == optimizer.step_count == 3
    assert sorted(restored.state_dict()) == sorted(saved)
    for key, value in saved.items():
        np.testing.assert_array_equal(restored.state_dict()[key], value)
        assert restored.state_dict()[key].dtype == value.dtype
    params_original, params_restored = params, params
    for seed in range(3, 6):
        params_original = optimizer.step(params_original, model_delta(seed))
        params_restored = restored.step(params_restored, model_delta(seed))
        assert_weights_equal(params_restored, params_original)


@pytest.mark.parametrize("optimizer", all_optimizers(), ids=lambda o: o.name)
def test_state_round_trips_through_safetensors_bytes(optimizer: ServerOptimizer) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    params = optimizer.step(MODEL, model_delta(1))
    blob = safetensors_numpy.save(optimizer.state_dict())
    restored = make_server_optimizer(optimizer.name, optimizer.learning_rate)
    restored.load_state_dict(safetensors_numpy.load(blob))
    assert_weights_equal(restored.step(params, model_delta(2)), optimizer.step(params, model_delta(2)))


def test_fresh_optimizer_state_is_just_the_step() -> None:
    state = ServerAdam(0.1).state_dict()
    assert list(state) == ["step"]
    assert state["step"].shape == ()
    assert state["step"].dtype == np.int64
    assert int(state["step"]) == 0


def test_state_dict_is_a_copy() -> None:
    optimizer = ServerAdam(0.1)
    params = optimizer.step(THETA, DELTA)
    optimizer.state_dict()["m/w"][:] = 123.0
    reference = ServerAdam(0.1)
    reference.step(THETA, DELTA)
    assert_weights_equal(optimizer.step(params, DELTA), reference.step(params, DELTA))


def test_load_state_dict_copies_its_input() -> None:
    source = ServerAdam(0.1)
    params = source.step(THETA, DELTA)
    state = source.state_dict()
    target = ServerAdam(0.1)
    target.load_state_dict(state)
    state["v/w"][:] = 123.0
    assert_weights_equal(target.step(params, DELTA), source.step(params, DELTA))


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"m/w": np.zeros(2, np.float32), "v/w": np.zeros(2, np.float32)}, "no 'step'"),
        ({"step": np.array([1, 2])}, "integer scalar"),
        ({"step": np.array(1.0)}, "integer scalar"),
        ({"step": np.array(-1)}, "-1"),
        ({"step": np.array(1), "m/w": np.zeros(2, np.float32)}, r"lacks the slots \['v'\]"),
        ({"step": np.array(1), "x/w": np.zeros(2, np.float32)}, "'x/w'"),
        ({"step": np.array(1), "w": np.zeros(2, np.float32)}, "unexpected state key 'w'"),
        ({"step": np.array(1), "m/w": np.zeros(2, np.float64), "v/w": np.zeros(2, np.float32)}, "float64"),
        ({"step": np.array(1), "m/w": np.zeros(2, np.float32), "v/w": np.zeros(3, np.float32)}, "shape"),
        ({"step": np.array(1), "m/w": np.zeros(2, np.float32), "v/b": np.zeros(2, np.float32)}, "names"),
    ],
)
def test_malformed_state_is_rejected(state: dict[str, np.ndarray], message: str) -> None:
    optimizer = ServerAdam(0.1)
    with pytest.raises(InvalidStateError, match=message):
        optimizer.load_state_dict(state)
    assert optimizer.state_dict().keys() == {"step"}  # a failed load leaves the state alone


def test_state_for_another_model_is_rejected_on_step() -> None:
    optimizer = ServerAdam(0.1)
    optimizer.load_state_dict(
        {"step": np.array(1), "m/other": np.zeros(2, np.float32), "v/other": np.ones(2, np.float32)}
    )
    with pytest.raises(ShapeMismatchError, match="other"):
        optimizer.step(THETA, DELTA)


def test_step_rejects_delta_of_another_shape() -> None:
    optimizer = ServerSGD(1.0)
    with pytest.raises(ShapeMismatchError, match=r"\(3,\)"):
        optimizer.step(THETA, weights(0.1, 0.2, 0.3))
    assert optimizer.step_count == 0


@pytest.mark.parametrize(
    ("name", "kwargs", "expected_type", "expected_name"),
    [
        ("sgd", {}, ServerSGD, "sgd"),
        ("momentum", {}, ServerSGD, "momentum"),
        ("momentum", {"momentum": 0.5}, ServerSGD, "momentum"),
        ("adam", {"beta1": 0.8, "beta2": 0.9, "tau": 0.01}, ServerAdam, "adam"),
        ("yogi", {}, ServerYogi, "yogi"),
        ("adagrad", {"tau": 0.01}, ServerAdagrad, "adagrad"),
    ],
)
def test_factory_builds_by_name(name: str, kwargs: dict[str, float], expected_type: type, expected_name: str) -> None:
    optimizer = make_server_optimizer(name, 0.3, **kwargs)
    assert type(optimizer) is expected_type
    assert optimizer.name == expected_name
    assert optimizer.learning_rate == 0.3


def test_factory_momentum_default_is_point_nine() -> None:
    optimizer = make_server_optimizer("momentum", 1.0)
    assert isinstance(optimizer, ServerSGD)
    assert optimizer.momentum == 0.9


@pytest.mark.parametrize(
    ("name", "learning_rate", "kwargs", "message"),
    [
        ("rmsprop", 1.0, {}, "rmsprop"),
        ("sgd", 0.0, {}, "learning_rate.*0.0"),
        ("sgd", -1.0, {}, "-1.0"),
        ("sgd", float("nan"), {}, "nan"),
        ("sgd", 1.0, {"momentum": 0.9}, "0.9"),
        ("momentum", 1.0, {"momentum": 0.0}, "momentum > 0"),
        ("momentum", 1.0, {"momentum": 1.0}, r"\[0, 1\).*1.0"),
        ("adam", 1.0, {"beta2": 1.5}, "beta2.*1.5"),
        ("yogi", 1.0, {"tau": 0.0}, "tau.*0.0"),
        ("adagrad", 1.0, {"beta2": 0.9}, "beta2"),
        ("adam", 1.0, {"momentum": 0.9}, "momentum"),
    ],
)
def test_factory_rejects_bad_arguments(name: str, learning_rate: float, kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        make_server_optimizer(name, learning_rate, **kwargs)


@settings(max_examples=50, deadline=None)
@given(
    delta=arrays(np.float32, 4, elements=st.floats(-1, 1, width=32)),
    learning_rate=st.floats(0.01, 2.0),
)
def test_fedavgm_with_zero_momentum_is_theta_plus_lr_delta(delta: np.ndarray, learning_rate: float) -> None:
    params = {"w": np.linspace(-1, 1, 4, dtype=np.float32)}
    new_params = make_server_optimizer("sgd", learning_rate).step(params, {"w": delta})
    expected = (params["w"].astype(np.float64) + learning_rate * delta.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(new_params["w"], expected)
