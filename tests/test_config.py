"""Config tree: JSON round trip, presets from the installed package, overrides, validation."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    ("goal.min_bits", "1", "goal.min_bits=1 must be in [2, 8]"),
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


@pytest.mark.parametrize("key, value, message", [
    ("training.batch_size", '"abc"', "training.batch_size='abc' must be an integer"),
    ("training.batch_size", "0", r"training.batch_size=0 must be >= 1"),
    ("goal", "3", "config key goal is a section"),
    ("search.surrogate_hidden", "64", "search.surrogate_hidden=64 must be a list of integers"),
    ("search.surrogate_hidden", "[64, 0]", r"search.surrogate_hidden=\[64, 0\] must be >= 1"),
    ("goal.min_bits", "3.5", "goal.min_bits=3.5 must be an integer"),
    ("goal.target_compression", "Infinity", "goal.target_compression=inf must be a finite number"),
    ("goal.target_accuracy_drop", "NaN", "goal.target_accuracy_drop=nan must be a finite number"),
    ("search.cycles", "true", "search.cycles=True must be an integer"),
    ("seed", "-1", r"seed=-1 must be in \[0, 2.1"),
    ("training.finetune_lr", "0", r"training.finetune_lr=0 must be in \(0, 1\]"),
    ("hla.discount", "1.5", r"hla.discount=1.5 must be in \[0, 1\]"),
    ("data.augment", '"yes"', "data.augment='yes' must be true or false"),
])
def test_every_key_has_a_type_and_a_range(key, value, message):
  with pytest.raises(ValueError, match=message) as err:
    C.override(C.Config(), {key: value}).validate()
  assert "\n" not in str(err.value)


def test_rules_joining_two_keys_name_both():
  with pytest.raises(ValueError, match="goal.min_bits=6 is above goal.max_bits=4"):
    C.override(C.Config(), {"goal.min_bits": "6", "goal.max_bits": "4"}).validate()


def _dotted_keys(node=C.Config(), where=""):
  import dataclasses
  for f in dataclasses.fields(node):
    yield where + f.name
    value = getattr(node, f.name)
    if dataclasses.is_dataclass(value):
      yield from _dotted_keys(value, where + f.name + ".")


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=2),
    max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(key=st.sampled_from(sorted(_dotted_keys())), value=JSONISH)
def test_any_value_for_any_key_gives_a_valid_config_or_one_line_naming_the_key(key, value):
  import json
  try:
    C.override(C.Config(), {key: json.dumps(value)}).validate()
  except ValueError as err:
    message = str(err)
    assert "\n" not in message and key.split(".")[0] in message, message
