"""A vectorised CRC-32C for kafka-python, for the benchmark's own processes.

kafka-python checksums every record batch with CRC-32C. Without the optional ``crc32c`` package (fedstream
does not depend on it) it uses a pure-Python loop: about 0.1 s per 420 KB update on this machine, for every
message produced and every message consumed. That would make the benchmark's tooling (backlog producer,
``fl.models`` reader) and the bare loop measure that loop rather than the pipeline, so they install this
one: the message is cut into equal lanes that are checksummed side by side with numpy, and the lanes' CRCs
are folded together pairwise with the CRC's shift operator (CRC is linear over GF(2)). Same results,
about 50× faster. The streaming job is not touched: it runs as shipped.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import numpy.typing as npt

_POLYNOMIAL = 0x82F63B78  # Castagnoli, reflected
_LANE_BYTES = 64
_SMALL = 4096


def _byte_table() -> list[int]:
    table = []
    for value in range(256):
        register = value
        for _ in range(8):
            register = (register >> 1) ^ (_POLYNOMIAL if register & 1 else 0)
        table.append(register)
    return table


_TABLE_LIST = _byte_table()
_TABLE = np.array(_TABLE_LIST, dtype=np.uint32)


def _raw(register: int, data: bytes | memoryview) -> int:
    for byte in bytes(data):
        register = _TABLE_LIST[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register


@cache
def _zeros_operator(length: int) -> tuple[int, ...]:
    """Images of the 32 basis registers after ``length`` zero bytes (the CRC's shift by ``length``)."""
    if length == 1:
        return tuple(_raw(1 << bit, b"\0") for bit in range(32))
    half = _zeros_operator(length // 2)
    images = tuple(_apply(half, _apply(half, 1 << bit)) for bit in range(32))
    if length % 2:
        one = _zeros_operator(1)
        images = tuple(_apply(one, image) for image in images)
    return images


def _apply(images: tuple[int, ...], register: int) -> int:
    result = 0
    for bit in range(32):
        if register >> bit & 1:
            result ^= images[bit]
    return result


@cache
def _shift_tables(length: int) -> npt.NDArray[np.uint32]:
    """Four 256-entry tables whose lookups, XORed, shift a register by ``length`` zero bytes."""
    images = _zeros_operator(length)
    tables = np.zeros((4, 256), dtype=np.uint32)
    for part in range(4):
        for value in range(256):
            tables[part, value] = _apply(images, value << (8 * part))
    return tables


def _shift(tables: npt.NDArray[np.uint32], registers: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    shifted: npt.NDArray[np.uint32] = (
        tables[0][registers & 0xFF]
        ^ tables[1][(registers >> 8) & 0xFF]
        ^ tables[2][(registers >> 16) & 0xFF]
        ^ tables[3][registers >> 24]
    )
    return shifted


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """CRC-32C of ``data``, as ``kafka.record.util.calc_crc32c`` returns it."""
    view = memoryview(data).cast("B")
    if len(view) < _SMALL:
        return _raw(0xFFFFFFFF, view) ^ 0xFFFFFFFF
    lanes = 1 << max(0, (len(view) - 1) // _LANE_BYTES).bit_length()
    padded = np.zeros(lanes * _LANE_BYTES, dtype=np.uint8)
    padded[-len(view) :] = np.frombuffer(view, dtype=np.uint8)  # leading zeros leave a zero register unchanged
    padded[-len(view) : -len(view) + 4] ^= 0xFF  # the initial register 0xFFFFFFFF, folded into the first bytes
    columns = padded.reshape(lanes, _LANE_BYTES).T.astype(np.uint32)
    registers = np.zeros(lanes, dtype=np.uint32)
    for column in columns:
        registers = _TABLE[(registers ^ column) & 0xFF] ^ (registers >> 8)
    length = _LANE_BYTES
    while len(registers) > 1:
        registers = _shift(_shift_tables(length), registers[0::2]) ^ registers[1::2]
        length *= 2
    return int(registers[0]) ^ 0xFFFFFFFF


def install() -> None:
    """Make kafka-python (in this process) use :func:`crc32c` unless the ``crc32c`` package is present."""
    from kafka.record import default_records, util

    if getattr(util, "crc32c_c", None) is not None:
        return
    default_records.calc_crc32c = lambda memview: crc32c(memview)
