"""The scale benchmark's pure parts: model layouts, settings, the spool, the tables and JSON rows (no Kafka)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.scale import _parser as scale_parser
from bench.scale import settings_from
from bench.scale_measure import numpy_floor, read_spool, sample_count, write_spool
from bench.scale_model import (
    ScaleSettings,
    driver_memory_gib,
    failure_summary,
    layout_parameters,
    model_layout,
    model_name,
    parse_encodings,
    parse_sizes,
    random_delta,
    size_label,
)
from bench.scale_report import (
    EncodingRun,
    SizeResult,
    document,
    format_encodings,
    format_phases,
    format_sizes,
    format_verdict,
    json_row,
    largest_ok,
    write_results,
)
from producers.updates import build_chunked_update
from schemas.messages import Encoding


@pytest.mark.parametrize("parameters", [1, 5, 3 * 1024, 3 * 1024 + 7, 1_000_000, 10_000_000, 100_000_000])
def test_a_layout_has_exactly_the_size_in_a_few_tensors(parameters: int) -> None:
    layout = model_layout(parameters)
    assert layout_parameters(layout) == parameters
    assert 1 <= len(layout) <= 4
    assert all(all(side > 0 for side in shape) for shape in layout.values())


def test_a_million_parameters_are_three_matrices_and_a_bias() -> None:
    layout = model_layout(1_000_000)
    assert layout == {
        "dense_0.weight": (325, 1024),
        "dense_1.weight": (325, 1024),
        "dense_2.weight": (325, 1024),
        "dense_head.bias": (1_600,),
    }


def test_sizes_encodings_and_names_parse() -> None:
    assert parse_sizes("1M, 10_000_000,2.5k,1e8") == (1_000_000, 10_000_000, 2_500, 100_000_000)
    assert parse_encodings("int8,float16") == (Encoding.FLOAT32, Encoding.INT8, Encoding.FLOAT16)
    assert size_label(100_000_000) == "100M" and size_label(2_500) == "2.5k" and size_label(7) == "7"
    assert model_name(1_000_000) == "scale-1m" and model_name(2_500) == "scale-2-5k"


def test_settings_from_the_command_line() -> None:
    quick = settings_from(scale_parser().parse_args(["--quick"]))
    assert quick.sizes == (1_000_000, 10_000_000) and quick.encodings == (Encoding.FLOAT32,)
    chosen = settings_from(scale_parser().parse_args(["--sizes", "100M", "--encodings", "float32,int8"]))
    assert chosen.sizes == (100_000_000,)
    assert chosen.encodings_run_at(100_000_000) == (Encoding.FLOAT32,)  # other encodings: bytes only
    assert chosen.encodings_run_at(1_000_000) == (Encoding.FLOAT32, Encoding.INT8)
    with pytest.raises(ValueError, match="float32"):
        ScaleSettings(encodings=(Encoding.INT8,)).check()


def test_driver_memory_grows_with_the_update() -> None:
    assert driver_memory_gib(4_000_000) == 2
    assert driver_memory_gib(40_000_000) == 3
    assert driver_memory_gib(400_000_000) == 8


def test_a_failure_names_the_telling_log_line() -> None:
    log = "INFO start\njava.lang.OutOfMemoryError: Java heap space\nERROR later\n"
    assert "OutOfMemoryError" in failure_summary(log, 1, "version 1")
    assert "OOM killer" in failure_summary("INFO fine\n", -9, "version 1")


def test_the_spool_gives_back_what_was_written_and_the_floor_sums_it(tmp_path: Path) -> None:
    layout = model_layout(5_000)
    updates = []
    for index in range(3):
        _, chunks = build_chunked_update(
            client_id=f"c-{index}",
            model_name="scale-5k",
            base_version=0,
            sample_count=sample_count(index),
            delta=random_delta(layout, seed=index),
            max_message_bytes=4_000,
            encoding=Encoding.FLOAT32,
        )
        updates.append((f"c-{index}", chunks))
    spool = tmp_path / "spool.bin"
    sizes = write_spool(spool, iter(updates))
    assert list(read_spool(spool)) == updates
    assert sizes == [sum(len(chunk) for chunk in chunks) for _, chunks in updates]
    total, sum_only = numpy_floor(spool, 5_000)
    assert 0 < sum_only <= total


def _result(parameters: int, seconds: list[float], status: str = "ok") -> SizeResult:
    result = SizeResult(parameters=parameters, tensors=4, buffer_size=10, update_bytes=4 * parameters)
    result.encodings["float32"] = EncodingRun("float32", 5, 4 * parameters + 5_000, 10, seconds, [0.5] * len(seconds))
    result.encodings["float32"].status = "ok" if seconds else "failed"
    result.encodings["int8"] = EncodingRun("int8", 2, parameters + 2_000, 10)
    result.numpy_seconds, result.numpy_sum_seconds = 0.5, 0.2
    result.driver_peak_rss_bytes, result.jvm_peak_rss_bytes, result.tree_peak_rss_bytes = 2**30, 2**31, 3 * 2**30
    result.driver_memory_gib = 2
    result.phases = {"read_kafka": 1.0, "write_updates": 2.0, "status_wall": 4.0, "first_batch_wait": 0.5}
    result.batches_per_version = 4.0
    if status == "failed":
        result.fail("out of memory: the machine had 1.0 GiB available")
    return result


def test_figures_rows_and_tables_from_results(tmp_path: Path) -> None:
    small, large = _result(1_000_000, [4.0, 2.0, 3.0]), _result(100_000_000, [], status="failed")
    assert small.seconds_per_version == 3.0
    assert small.job_bytes_per_s == pytest.approx(10 * 4_000_000 / 3.0)
    assert small.numpy_bytes_per_s == pytest.approx(10 * 4_000_000 / 0.5)
    assert small.ratio == pytest.approx(0.5 / 3.0)
    assert largest_ok([small, large]) is small
    row = json_row(small)
    for key in (
        "parameters", "update_bytes", "chunks_per_update", "kafka_bytes_per_version", "seconds_per_version",
        "job_bytes_per_s", "numpy_bytes_per_s", "ratio", "driver_peak_rss_bytes", "jvm_peak_rss_bytes", "status",
        "error",
    ):  # fmt: skip
        assert key in row
    assert row["kafka_bytes_per_version"] == {"float32": 10 * 4_005_000, "int8": 10 * 1_002_000}
    failed = json_row(large)
    assert failed["status"] == "failed" and "out of memory" in str(failed["error"])
    assert failed["seconds_per_version"] is None and failed["ratio"] is None
    sizes = format_sizes([small, large])
    assert "1M (4 tensors)" in sizes and "failed: out of memory" in sizes and "3.00 (3)" in sizes
    assert "int8" in format_encodings([small, large])
    phases = format_phases([small, large])
    assert "100M" not in phases  # no version, no phases
    assert phases.splitlines()[-1].split()[-2:] == ["1.00", "4.00"]  # outside = wall − the phases
    assert (
        format_verdict([small, large])
        == "largest model that worked: 1M parameters (4.0 MB a float32 update); failed: 100M"
    )
    payload = document([small, large], started_at="now", versions=3, buffer_size=10)
    path = write_results(payload, tmp_path)
    written = json.loads(path.read_text())
    assert written["largest_ok_parameters"] == 1_000_000 and written["cpu_count"] >= 1
    assert len(written["load_average"]) == 3 and len(written["sizes"]) == 2


def test_the_synthetic_delta_is_float32_of_the_layout() -> None:
    delta = random_delta(model_layout(10_000), seed=1)
    assert all(array.dtype == np.float32 for array in delta.values())
    assert sum(array.size for array in delta.values()) == 10_000


def test_the_executor_threshold_reaches_the_settings_and_names_where_each_size_is_made() -> None:
    settings = settings_from(scale_parser().parse_args(["--quick", "--executor-aggregation-min-parameters", "5000000"]))
    assert settings.executor_aggregation_min_parameters == 5_000_000
    assert [settings.aggregated_on(size) for size in settings.sizes] == ["driver", "executors"]
    assert settings_from(scale_parser().parse_args(["--quick"])).aggregated_on(10**9) == "driver"
