"""TensorBoard event files without TensorFlow: scalar summaries, encoded by hand.

An event file is a sequence of records: an 8-byte little-endian length, its masked CRC-32C, the bytes of one
`Event` protocol buffer, their masked CRC-32C. The few protobuf fields written here (field numbers from
TensorBoard's event.proto and summary.proto): Event {1: wall_time double, 2: step int64, 3: file_version string,
5: summary, 6: session_log}, Summary {1: repeated value}, Summary.Value {1: tag string, 2: simple_value float},
SessionLog {1: status enum, START = 1}.
"""

import os
import socket
import struct
import time


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> bytes:
    crc = crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(step: int, body: bytes) -> bytes:
    return b"\x09" + struct.pack("<d", time.time()) + b"\x10" + _varint(step) + body


class EventWriter:
    """Appends scalars to a new event file in `logdir`; each `scalars` call is flushed to disk at once."""

    def __init__(self, logdir: str, start_step: int = 0):
        os.makedirs(logdir, exist_ok=True)
        name = f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}"
        self.path = os.path.join(logdir, name)
        self._file = open(self.path, "ab")
        self._write(_event(start_step, _field(3, b"brain.Event:2")))
        # A session start at `start_step`: TensorBoard drops points an earlier, interrupted run wrote past it.
        self._write(_event(start_step, _field(6, b"\x08\x01")))

    def _write(self, event: bytes) -> None:
        header = struct.pack("<Q", len(event))
        self._file.write(header + _masked_crc(header) + event + _masked_crc(event))
        self._file.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One event at `step` holding a scalar per tag."""
        summary = b"".join(_field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", float(value)))
                           for tag, value in values.items())
        self._write(_event(step, _field(5, summary)))

    def close(self) -> None:
        self._file.close()
