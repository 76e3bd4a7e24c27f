"""ScaleConfig: YAML loading, the shipped defaults, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from scalemm.store import MODALITIES
from scalemm.fuse.config import ALL_MODALITIES, ConfigError, ScaleConfig

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_yaml_equals_the_defaults() -> None:
    assert ScaleConfig.from_yaml(ROOT / "configs" / "scale.yaml") == ScaleConfig()
    assert tuple(ALL_MODALITIES) == tuple(MODALITIES)
    # the paper-literal variant stays reachable: only the keys its header names differ
    paper = ScaleConfig.from_yaml(ROOT / "configs" / "scale_paper.yaml")
    diff = {k for k in ScaleConfig.field_names() if getattr(paper, k) != getattr(ScaleConfig(), k)}
    assert diff == {"contrast_on", "weight_scale", "importance", "embed_from", "embed_weighting",
                    "subset_weight", "simcl_weight", "masked_losses", "fusion_layers", "frozen_skip",
                    "importance_shrink", "identification_power"}
    assert (paper.importance, paper.embed_weighting, paper.simcl_weight, paper.subset_weight) == \
        ("diagonal", "sum", 1.0, 0.0)


def test_yaml_values_overrides_and_canonical_modality_order(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("modalities: [text, image]\nepochs: 3\nharmonize: false\nlr: 3.0e-4\n")
    cfg = ScaleConfig.from_yaml(p, epochs=7, seed=None)
    assert cfg.modalities == ["image", "text"] and cfg.epochs == 7 and cfg.harmonize is False
    assert cfg.lr == pytest.approx(3e-4) and cfg.seed == 0
    cfg.to_yaml(tmp_path / "back.yaml")
    assert ScaleConfig.from_yaml(tmp_path / "back.yaml") == cfg


@pytest.mark.parametrize("text, match", [
    ("batchsize: 32\n", r"unknown setting 'batchsize' \(did you mean 'batch_size'\?\)"),
    ("epochs: two\n", "'epochs' must be of type int"),
    ("harmonize: 1\n", "'harmonize' must be of type bool"),
    ("modalities: [image, smell]\n", "unknown modalities"),
    ("d_model: 30\nheads: 4\n", "divisible"),
    ("checkpoint_unit: hour\n", "checkpoint_unit"),
    ("attn_dropout: 1.0\n", r"attn_dropout must be in \[0, 1\)"),
    ("- a\n- b\n", "mapping"),
    ("a: [\n", "not valid YAML"),
])
def test_bad_configs_name_the_file_and_the_setting(tmp_path, text, match) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as e:
        ScaleConfig.from_yaml(p)
    assert str(p) in str(e.value)


def test_missing_config_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        ScaleConfig.from_yaml(tmp_path / "nope.yaml")
