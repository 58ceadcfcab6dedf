"""64-bit hashes of texts and pairs, the index that remembers them, and the seeded prompt split.

What the validator keeps across chunks is only these 8-byte hashes (pairs for duplicates and
contradictions, prompts for leakage and the split), never the texts, so memory grows by
16 bytes per row however long the rows are.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd


def hash_texts(values: list) -> np.ndarray:
    """A stable 64-bit hash per string (pandas' SipHash with its fixed key)."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return pd.util.hash_array(array, categorize=False)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads combined hashes over all 64 bits."""
    with np.errstate(over="ignore"):
        h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return h ^ (h >> np.uint64(31))


def combine(*hashes: np.ndarray) -> np.ndarray:
    """One hash per row over several column hashes, order-sensitive ((p, c, r) != (p, r, c))."""
    out = np.zeros(len(hashes[0]), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k, h in enumerate(hashes):
            out = _mix(out * np.uint64(0x100000001B3) + h + np.uint64(k + 1))
    return out


def buckets_from_hashes(prompt_hashes: np.ndarray, seed: int) -> np.ndarray:
    """A number in [0, 1) per prompt hash, salted by the seed: below test_size is the test side."""
    salt = np.uint64(int.from_bytes(hashlib.sha256(f"alignflow-split-{seed}".encode()).digest()[:8], "big"))
    return (_mix(prompt_hashes ^ salt) >> np.uint64(11)).astype(np.float64) / float(2**53)


def prompt_buckets(prompts: list[str], seed: int) -> np.ndarray:
    """A number in [0, 1) per prompt, from a seeded hash of its text: the split's only input."""
    if not prompts:
        return np.zeros(0)
    return buckets_from_hashes(hash_texts(prompts), seed)


class HashIndex:
    """uint64 hash -> first row number, as sorted runs merged geometrically: 16 bytes per entry."""

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return sum(len(h) for h, _ in self.runs)

    def lookup(self, hashes: np.ndarray) -> np.ndarray:
        out = np.full(len(hashes), -1, dtype=np.int64)
        for keys, rows in self.runs:
            pos = np.searchsorted(keys, hashes).clip(max=len(keys) - 1)
            found = (keys[pos] == hashes) & (out < 0)
            out[found] = rows[pos[found]]
        return out

    def add(self, hashes: np.ndarray, rows: np.ndarray) -> None:
        """Add hashes not yet present (the caller passes each hash with its first row)."""
        if not len(hashes):
            return
        order = np.argsort(hashes, kind="stable")
        self.runs.append((hashes[order], rows[order]))
        while len(self.runs) > 1 and len(self.runs[-1][0]) * 2 >= len(self.runs[-2][0]):
            (k2, r2), (k1, r1) = self.runs.pop(), self.runs.pop()
            keys, rows = np.concatenate([k1, k2]), np.concatenate([r1, r2])
            order = np.argsort(keys, kind="stable")
            self.runs.append((keys[order], rows[order]))
