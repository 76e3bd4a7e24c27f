"""Train / validation / test splits of a catalogue, by product instance.

Every listing of one physical product (its ``instance``; a product without one is its own
instance, keyed by its id) falls in the same split, so no instance is seen by training and
then searched for at test time. The split of an instance is a pure function of its key and
the split seed (a hash mapped to [0, 1) and cut at the cumulative fractions): it needs no
global state, it is the same in every process and on every machine, and it does not change
when the catalogue grows, so a product added tomorrow never moves an old one between splits.
The fractions hold in expectation (a hash split is not stratified); the sizes actually drawn
are recorded with every evaluation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from scalemm.errors import ConfigError

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass(frozen=True)
class SplitSpec:
    """Seed and fractions (train, val, test) of a split by instance."""

    seed: int = 0
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)

    def __post_init__(self) -> None:
        f = tuple(float(x) for x in self.fractions)
        if len(f) != 3 or any(x < 0 for x in f) or abs(sum(f) - 1.0) > 1e-6:
            raise ConfigError(f"split fractions must be three non-negative numbers (train, val, test) "
                              f"summing to 1, got {list(self.fractions)}")
        object.__setattr__(self, "fractions", f)

    def to_json(self) -> dict:
        return {"seed": self.seed, "fractions": list(self.fractions), "by": "instance"}


def split_key(instance: str, item_id: str) -> str:
    """What a split is drawn for: the instance, or the id of a product without one."""
    return f"i:{instance}" if instance else f"p:{item_id}"


def _unit(seed: int, key: str) -> float:
    h = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2.0 ** 64


def assign(instances: Sequence[str], ids: Sequence[str], spec: SplitSpec) -> np.ndarray:
    """The split name of every item (an array of 'train' / 'val' / 'test')."""
    cuts = np.cumsum(spec.fractions)[:2]
    u = np.fromiter((_unit(spec.seed, split_key(i, p)) for i, p in zip(instances, ids)), np.float64,
                    count=len(ids))
    return np.array(SPLITS, dtype=object)[np.searchsorted(cuts, u, side="right")]


def rows_of(names: np.ndarray, which: str | Sequence[str]) -> np.ndarray:
    """Row indices (sorted) of the items in split ``which`` ('train', 'train+val', 'all', ...)."""
    wanted = set(SPLITS) if which == "all" else set(which.split("+") if isinstance(which, str) else which)
    bad = wanted - set(SPLITS)
    if bad:
        raise ConfigError(f"unknown split(s) {sorted(bad)}; use train, val, test, a '+' of them, or all")
    return np.flatnonzero(np.isin(names, list(wanted)))
