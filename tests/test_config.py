"""Config tree: JSON round trip, presets from the installed package, overrides, validation."""

import pytest

from hirelc_jax import config as C


def test_json_round_trip_is_exact(tmp_path):
  cfg = C.override(C.preset("paper"), {"goal.target_accuracy_drop": "0.25", "lla.betas": "[1, 2, 3]",
                                        "search.signal": "proxy", "data.limit": "500"})
  C.save(cfg, tmp_path / "c.json")
  assert C.load(tmp_path / "c.json") == cfg
  assert cfg.lla.betas == (1, 2, 3) and cfg.goal.target_accuracy_drop == 0.25


def test_presets_are_packaged():
  assert {"smoke", "default", "paper", "vit_tiny", "cnn"} <= set(C.preset_names())
  assert C.preset("vit_tiny").model.name == "vit_tiny"
  assert C.preset("paper").goal.max_prune == 0.6


@pytest.mark.parametrize("key, value, message", [
    ("goal.min_bits", "1", "goal bits 1..8"),
    ("goal.max_prune", "0.9", "goal.max_prune=0.9"),
    ("goal.quantization_type", '"fp"', "quantization_type='fp'"),
    ("goal.strategy", '"zigzag"', "goal.strategy='zigzag'"),
    ("lla.algorithms", '["ppo", "sac"]', "lla.algorithms"),
    ("lla.betas", "[1]", "lla.betas has 1 entries for 3 members"),
    ("search.cycles", "0", "search.cycles=0"),
    ("data.val_fraction", "0", "data.val_fraction=0"),
    ("search.proposer", '"oracle"', "search.proposer='oracle'"),
])
def test_validation_names_the_bad_value(key, value, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
    C.override(C.Config(), {key: value}).validate()


def test_the_integer_program_needs_the_error_table():
  with pytest.raises(ValueError, match="search.proposer='ilp' solves over the error table"):
    C.override(C.Config(), {"search.proposer": '"ilp"', "search.signal": '"surrogate"'}).validate()


def test_unknown_key_and_bad_file(tmp_path):
  with pytest.raises(ValueError, match="unknown config key search.'cycle'"):
    C.override(C.Config(), {"search.cycle": "3"})
  bad = tmp_path / "bad.json"
  bad.write_text("{nope")
  with pytest.raises(ValueError, match="not valid JSON"):
    C.load(bad)
  with pytest.raises(ValueError, match="does not exist"):
    C.load(tmp_path / "missing.json")
