"""Malformed variants of a valid packet, each with the reason a receiver must reject it under.

For testing a pipeline (and a DAQ engineer's own sender) against corrupt input: random bytes,
truncated msgpack, wrong version/kind/modality, wrong types, absurd or inconsistent item counts,
NaN/inf in float arrays, arrays sent as strings, and identical re-sends (true duplicates). Every
variant but the re-send carries a unique extra key, so two identical bad packets never meet in flight.
"""

from __future__ import annotations

from typing import Iterator

import msgpack
import numpy as np

KINDS = ("random", "truncated", "version", "kind", "modality", "seq-type", "n-huge", "n-size", "non-finite",
         "array-str", "duplicate")


def mutate(good: bytes, kind: str, rng: np.random.Generator, uid: int, item_key: str = "n") -> tuple[bytes, str] | None:
    """(bad packet, expected reason) for one ``kind``; None when the packet offers nothing to break
    that way (e.g. no float array for ``non-finite``). ``duplicate`` returns ``good`` itself."""
    base = {**msgpack.unpackb(good, raw=False), "fuzz_id": uid}
    arrays = [k for k, v in base.items() if isinstance(v, bytes)]
    if kind == "random":
        return b"\xc1" + rng.bytes(int(rng.integers(1, 200))), "not-msgpack"
    if kind == "truncated":
        return good[: int(rng.integers(1, len(good) - 1))], "not-msgpack"
    if kind == "version":
        return msgpack.packb({**base, "v": 7}), "unknown-version"
    if kind == "kind":
        return msgpack.packb({**base, "kind": "no-such-kind"}), "unknown-kind"
    if kind == "modality":
        return msgpack.packb({**base, "v": 2, "modality": "no-such-modality"}), "unknown-modality"
    if kind == "seq-type":
        return msgpack.packb({**base, "seq": "x"}), "bad-type"
    if kind == "n-huge":
        return msgpack.packb({**base, item_key: 1 << 40}), "oversized"
    if kind == "n-size":
        n = base[item_key]
        return msgpack.packb({**base, item_key: n - 1 if n > 1 else n + 1}), "bad-size"
    if kind == "non-finite":
        for k in arrays:  # the first array whose bytes are float32/float64 per its declared use
            dt = base.get(f"{k}_dtype")
            for cand in ([dt] if isinstance(dt, str) else ["<f4", "<f8"]):
                if np.dtype(cand).kind == "f" and len(base[k]) % np.dtype(cand).itemsize == 0:
                    a = np.frombuffer(base[k], cand).copy()
                    if a.size and np.isfinite(a).all() and _looks_float(a):
                        # every value: a packet with only some bad rows is (rightly) kept with those rows flagged
                        a[:] = np.nan if rng.random() < 0.5 else np.inf
                        return msgpack.packb({**base, k: a.tobytes()}), "non-finite"
        return None
    if kind == "array-str":
        if not arrays:
            return None
        return msgpack.packb({**base, arrays[0]: "not bytes"}), "bad-type"
    if kind == "duplicate":
        return good, "duplicate"
    raise ValueError(f"unknown fuzz kind {kind!r}")


def _looks_float(a: np.ndarray) -> bool:
    """Heuristic: the bytes really hold floats (integers reinterpreted give denormals or huge values)."""
    mag = np.abs(a[a != 0])
    return bool(mag.size == 0 or (np.median(mag) > 1e-30 and np.median(mag) < 1e30))


def fuzz(goods: list[bytes], n: int, seed: int = 0, item_key: str = "n",
         kinds: tuple[str, ...] = KINDS) -> Iterator[tuple[int, bytes, str]]:
    """``n`` variants spread over ``goods``: (index of the good packet it imitates, bytes, reason)."""
    rng = np.random.default_rng(seed)
    per = max(1, n // len(goods))
    made, uid = 0, 0
    while made < n:
        g = min(made // per, len(goods) - 1)
        got = mutate(goods[g], kinds[uid % len(kinds)], rng, uid, item_key)
        uid += 1
        if got is not None:
            made += 1
            yield g, *got
