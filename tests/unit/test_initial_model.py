from pathlib import Path

import numpy as np
import pytest

from schemas.tensors import encode_tensors
from streaming_jobs.initial_model import InvalidInitialModelError, read_initial_model

LIMIT = 16 * 2**20


def _file(tmp_path: Path, tensors: dict[str, np.ndarray]) -> Path:
    path = tmp_path / "init.safetensors"
    path.write_bytes(encode_tensors(tensors))
    return path


def test_a_valid_file_reads_back_its_tensors(tmp_path: Path) -> None:
    weights = {"conv.weight": np.ones((2, 3), dtype=np.float32), "conv.bias": np.zeros(2, dtype=np.float32)}
    read = read_initial_model(_file(tmp_path, weights), max_message_bytes=LIMIT)
    assert sorted(read) == ["conv.bias", "conv.weight"] and read["conv.weight"].dtype == np.float32


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"w": np.ones(3, dtype=np.float64)}, r"tensor 'w' is float64, and every tensor must be float32"),
        ({"w": np.ones(3, dtype=np.float16)}, r"tensor 'w' is float16"),
        ({"w": np.ones(3, dtype=np.int32)}, r"tensor 'w' is int32"),
        ({"w": np.array([1.0, np.nan, np.inf], dtype=np.float32)}, r"tensor 'w' has 2 NaN or infinite values"),
        ({}, "holds no tensors"),
    ],
)
def test_a_file_that_would_fail_every_update_is_refused_naming_the_tensor(
    tmp_path: Path, tensors: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(InvalidInitialModelError, match=message):
        read_initial_model(_file(tmp_path, tensors), max_message_bytes=LIMIT)


def test_a_file_that_is_not_safetensors_or_missing_is_refused(tmp_path: Path) -> None:
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(b"\x80\x04\x95 a torch pickle")
    with pytest.raises(InvalidInitialModelError, match=r"model.pt is not a safetensors file"):
        read_initial_model(pickled, max_message_bytes=LIMIT)
    with pytest.raises(InvalidInitialModelError, match=r"absent.safetensors: cannot be read"):
        read_initial_model(tmp_path / "absent.safetensors", max_message_bytes=LIMIT)


def test_a_model_larger_than_one_kafka_message_is_taken_when_its_updates_fit_in_chunks(tmp_path: Path) -> None:
    path = _file(tmp_path, {"w": np.zeros(300_000, dtype=np.float32)})  # 1.2 MB: two chunks at 1 MiB
    assert read_initial_model(path, max_message_bytes=2**20)["w"].shape == (300_000,)


def test_a_model_that_does_not_fit_even_in_chunks_or_cannot_name_its_tensors_in_a_layout_is_refused(
    tmp_path: Path,
) -> None:
    huge = _file(tmp_path, {"w": np.zeros(300_000, dtype=np.float32)})  # > MAX_CHUNKS chunks of 1 KiB
    with pytest.raises(
        InvalidInitialModelError, match=r"does not fit Kafka's max_message_bytes \(1024\) even in chunks"
    ):
        read_initial_model(huge, max_message_bytes=1024)
    spaced = _file(tmp_path, {"a weight": np.zeros(300_000, dtype=np.float32)})
    with pytest.raises(InvalidInitialModelError, match=r"rename \['a weight'\]"):
        read_initial_model(spaced, max_message_bytes=2**20)


def test_the_job_command_names_the_problem_and_exits_2_before_starting_spark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fedstream.cli import main

    path = _file(tmp_path, {"w": np.ones(3, dtype=np.float64)})
    code = main(["job", "--initial-model", str(path), "--tables-root", str(tmp_path / "tables")])
    assert code == 2
    assert "tensor 'w' is float64" in capsys.readouterr().err
