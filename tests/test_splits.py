"""Splits by instance (scalemm.splits) and the dropped-modality draws of the robustness protocol."""

from __future__ import annotations

import numpy as np
import pytest

from scalemm.errors import ConfigError
from scalemm.fuse.variants import Variant, drop_mask, variant_presence
from scalemm.splits import SPLITS, SplitSpec, assign, rows_of


def _catalogue(n: int, start: int = 0) -> tuple[list[str], list[str]]:
    ids = [f"p{i}" for i in range(start, start + n)]
    inst = [f"i{i // 3}" if i % 5 else "" for i in range(start, start + n)]  # some without an instance
    return inst, ids


def test_every_instance_in_one_split_fractions_hold_and_growth_moves_nothing() -> None:
    inst, ids = _catalogue(6000)
    names = assign(inst, ids, SplitSpec(seed=0))
    for key in set(inst) - {""}:
        assert len({names[i] for i, x in enumerate(inst) if x == key}) == 1
    share = {s: float((names == s).mean()) for s in SPLITS}
    assert share["train"] == pytest.approx(0.6, abs=0.03) and share["test"] == pytest.approx(0.2, abs=0.03)
    # a grown catalogue: the old products keep their split
    inst2, ids2 = _catalogue(9000)
    assert (assign(inst2, ids2, SplitSpec(seed=0))[:6000] == names).all()
    # another seed draws another split
    assert (assign(inst, ids, SplitSpec(seed=1)) != names).mean() > 0.3


def test_rows_of_and_bad_specs() -> None:
    names = np.array(["train", "test", "val", "train"], dtype=object)
    assert rows_of(names, "train").tolist() == [0, 3]
    assert rows_of(names, "train+val").tolist() == [0, 2, 3]
    assert rows_of(names, "all").tolist() == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="unknown split"):
        rows_of(names, "training")
    with pytest.raises(ConfigError, match="sum"):
        SplitSpec(fractions=(0.5, 0.2, 0.2))


def test_dropped_modalities_are_a_function_of_seed_id_and_modality() -> None:
    ids = [f"p{i}" for i in range(4000)]
    mods = ["image", "text", "table"]
    keep = drop_mask(ids, mods, 0.3, seed=7)
    assert keep.mean() == pytest.approx(0.7, abs=0.02)
    assert (drop_mask(ids[100:200], mods, 0.3, seed=7) == keep[100:200]).all()  # batch-independent
    assert (drop_mask(ids, mods, 0.3, seed=8) != keep).mean() > 0.2
    assert drop_mask(ids, mods, 0.0, seed=7).all()
    sub = variant_presence(Variant("t", modalities=("text",)), mods, ids[:5])
    assert sub[:, 1].all() and not sub[:, [0, 2]].any()


def test_robustness_draws_are_distinct_and_the_first_is_the_seed_itself() -> None:
    from scalemm.evaluate.protocol import mean_over_draws
    from scalemm.evaluate.run import drop_seeds
    ids = [f"p{i}" for i in range(2000)]
    mods = ["image", "text", "table", "video", "audio"]
    seeds = drop_seeds(2, 5)
    assert seeds[0] == 2 and len(set(seeds)) == 5
    masks = [drop_mask(ids, mods, 0.3, d) for d in seeds]
    for i in range(5):
        for j in range(i + 1, 5):
            assert (masks[i] != masks[j]).mean() > 0.2  # independent draws, not one repeated
    assert mean_over_draws([{"a": 0.8, "b": 1.0}, {"a": 0.6, "b": 0.5}]) == pytest.approx({"a": 0.7, "b": 0.75})
    with pytest.raises(ValueError, match="no robustness draw"):
        mean_over_draws([])
