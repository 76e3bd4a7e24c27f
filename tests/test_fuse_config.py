"""ScaleConfig: YAML loading, the shipped defaults, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from scalemm.store import MODALITIES
from scalemm.fuse.config import ALL_MODALITIES, ConfigError, ScaleConfig

ROOT = Path(__file__).resolve().parents[1]


def _stated(path: Path) -> dict:
    import yaml
    return yaml.safe_load(path.read_text()) or {}


def test_shipped_yaml_equals_the_defaults() -> None:
    """configs/scale.yaml is the defaults; every shipped file states only what differs from them."""
    assert ScaleConfig.from_yaml(ROOT / "configs" / "scale.yaml") == ScaleConfig()
    assert tuple(ALL_MODALITIES) == tuple(MODALITIES)
    default = ScaleConfig().to_dict()
    for path in ROOT.glob("configs/scale*.yaml"):
        for key, value in _stated(path).items():
            if isinstance(value, dict):  # a section: each key it states differs from its default
                same = [k for k, v in value.items() if ScaleConfig.from_dict({key: {k: v}}).to_dict()[key][k]
                        == default[key][k]]
                assert not same, f"{path.name} states {key}.{same} at the default"
            else:
                assert getattr(ScaleConfig.from_dict({key: value}), key) != default[key], \
                    f"{path.name} states {key} at its default"
    # the paper's SCALE: the joint transformer, SIMCL with its own W, masked modelling, W[m, m]
    paper = ScaleConfig.from_yaml(ROOT / "configs" / "scale_paper.yaml")
    assert (paper.importance, paper.embedding.weighting, paper.simcl_weight, paper.subset_weight,
            paper.masked_losses, paper.fusion_layers > 0) == ("diagonal", "sum", 1.0, 0.0, True, True)


def test_the_training_config_has_at_most_25_keys_and_sections_apart() -> None:
    assert len(ScaleConfig.field_names()) <= 25
    cfg = ScaleConfig()
    assert {"device", "threads", "max_steps"} <= set(cfg.to_dict()["runtime"])
    assert {"source", "weighting", "identification_power", "modality_heads"} == set(cfg.to_dict()["embedding"])
    assert "runtime" not in cfg.training_dict()  # a checkpoint keeps what was learned, not where it ran


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
    ("runtime:\n  checkpoint_unit: hour\n", "checkpoint_unit"),
    ("dropout: 1.0\n", r"dropout must be in \[0, 1\)"),
    ("mlp_ratio: 2.0\n", r"unknown setting 'mlp_ratio'"),
    ("embedding:\n  weighting: concat\n", "weighting must be"),
    ("runtime: 3\n", "runtime: expected a mapping"),
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
