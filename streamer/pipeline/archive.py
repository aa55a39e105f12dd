"""Raw archive of accepted input packets (``streamer sink --archive DIR``), for reprocessing later.

Append-only segments ``DIR/archive-<run>-<k>.log``: each record is a 4-byte little-endian length and
the packet exactly as received. Beside each segment, ``.idx.jsonl`` lines give ``[offset, length,
stream, seq, modality]`` per record, so a reader can select streams or seq ranges without parsing
packets. Segments roll over at ``segment_bytes``; a crash can leave a torn last record, which
:func:`read_archive` detects by its length and skips. Duplicates are not archived (the sink drops them
before), corrupt packets may be (they are only recognised by the worker); reprocessing validates again.
"""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path
from typing import Iterator

_LEN = struct.Struct("<I")


class RawArchive:
    def __init__(self, directory: str | Path, segment_bytes: int = 1 << 30, flush_s: float = 1.0):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run = f"{int(time.time()):x}{os.getpid():x}{os.urandom(2).hex()}"
        self.segment_bytes = segment_bytes
        self.flush_s = flush_s
        self._k = -1
        self._t = time.monotonic()
        self._open_next()

    def _open_next(self) -> None:
        self._k += 1
        stem = self.dir / f"archive-{self.run}-{self._k:05d}"
        self._log = open(f"{stem}.log", "ab", buffering=1 << 20)
        self._idx = open(f"{stem}.idx.jsonl", "a", buffering=1 << 16)
        self._offset = 0

    def append(self, raw: bytes, stream: str, seq: int, modality: str) -> None:
        if self._offset >= self.segment_bytes:
            self.close()
            self._open_next()
        self._log.write(_LEN.pack(len(raw)))
        self._log.write(raw)
        self._idx.write(json.dumps([self._offset, len(raw), stream, seq, modality]) + "\n")
        self._offset += _LEN.size + len(raw)

    def tick(self) -> None:
        if time.monotonic() - self._t >= self.flush_s:
            self._t = time.monotonic()
            self._log.flush()
            self._idx.flush()

    def close(self) -> None:
        self._log.close()
        self._idx.close()


def read_archive(directory: str | Path) -> Iterator[bytes]:
    """Every archived packet, segment by segment in the order written (torn tails skipped)."""
    for log in sorted(Path(directory).glob("archive-*.log")):
        data = log.read_bytes()
        pos = 0
        while pos + _LEN.size <= len(data):
            (n,) = _LEN.unpack_from(data, pos)
            if pos + _LEN.size + n > len(data):
                break  # torn last record of a crashed sink
            yield data[pos + _LEN.size: pos + _LEN.size + n]
            pos += _LEN.size + n
