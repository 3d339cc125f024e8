"""The experiment configuration: one frozen dataclass tree, JSON round-trip, presets.

Nothing mutates a Config: `override(config, {"goal.target_accuracy_drop": 0.5})`
returns a new one. Presets are JSON files in `configs/` (installed as
`hirelc_jax.configs`), each a partial tree applied over the defaults.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import typing
from importlib import resources
from typing import Any, Mapping, Optional

from hirelc_jax import config_rules
from hirelc_jax.compression import codes


SIGNALS = ("error_table", "surrogate", "proxy")
PROPOSERS = ("agents", "ilp", "both")
FLOORS = ("goal", "hla")
ACCURACY_UNITS = ("target", "point")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  name: str = "vit_tiny"
  patch_size: Optional[int] = None   # ViT patch side; None: 7 for 28x28, else the model default
  checkpoint: Optional[str] = None   # a user's orbax dir, or timm .safetensors/.npz for ViTs


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
  name: str = "fashion_mnist"
  data_dir: Optional[str] = None
  val_fraction: float = 0.1
  limit: Optional[int] = None        # subsample train/test for quick runs
  augment: bool = False             # random crop/flip; off: short schedules learn faster without


@dataclasses.dataclass(frozen=True, kw_only=True)
class GoalConfig:
  target_accuracy_drop: float = 1.0  # points of validation accuracy
  target_compression: float = 10.0   # honest whole-model ratio the search aims for
  min_bits: int = 2
  max_bits: int = 8
  max_prune: float = 0.8             # keep ratio >= 1 - max_prune
  quantization_type: str = "mixed"   # mixed | int | float
  strategy: Optional[str] = None     # fix one granularity (uniform, log, per_channel, learned)
  pruning: bool = True
  quantization: bool = True


@dataclasses.dataclass(frozen=True, kw_only=True)
class AgentConfig:
  """One ensemble (HLA or LLA): members' algorithms and reward weights."""
  algorithms: tuple[str, ...] = ("ppo", "a2c", "ppo")
  betas: tuple[float, ...] = (1.5, 5.0, 8.0)     # LLA compression weight / HLA w_comp scale
  alpha: float = 30.0
  gamma: float = 0.1
  lr: float = 3e-4
  n_envs: int = 2
  n_steps: int = 64
  updates_first: int = 8                         # PPO/A2C updates in cycle 1
  updates_per_cycle: int = 4                     # ... in each later cycle
  ent_coef: float = 0.01
  discount: float = 0.99                         # PPO/A2C gamma (not the reward's gamma); the search's
                                                 # rewards depend on the action alone, so both use 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class SearchConfig:
  cycles: int = 4
  sensitivity: str = "fisher"
  sensitivity_samples: int = 64
  warmup_samples: int = 20           # random plans evaluated for real before the cycles
  screen: int = 4                    # LLA candidates evaluated for real per cycle (1: fine-tune the vote)
  escalate: float = 1.25             # later cycles aim this much above a plan that met the target (1: fixed)
  escalate_floors: bool = True       # a raised goal also loosens the HLA's per-block floors, a level per doubling
  margin_se: float = 1.0             # the choice: a held-out drop counts as within the target only this many SEs below it
  escalate_margin_se: float = 1.0    # the escalation: the same for a fit-half drop to count as having met the target
  eval_samples: int = 2000           # validation examples for warm-up and candidate scoring
  signal: str = "error_table"        # LLA accuracy signal: error_table | surrogate | proxy
  high_level: bool = True            # False: no HLA, every block gets the goal's budget
  floors: str = "goal"               # every block's min bits / max pruning: goal (the goal's) | hla (the
                                     # original's per-level tables, loosened by escalate_floors)
  accuracy_unit: str = "target"      # the LLA's accuracy table A(D) in units of: target (the goal's
                                     # accuracy drop) | point (the original's 1 point)
  prior_goal: bool = True            # while no cycle met the target, aim at the error table's guess
  censored_calibration: bool = True  # the table's calibration counts collapsed plans (drop > 8 pt) as at
                                     # least 8 pt instead of leaving them out
  block_calibration: bool = True     # the table's calibration fits one slope per block (False: one for all)
  proposer: str = "agents"           # a cycle's candidates: agents | ilp (the integer program) | both
  surrogate_epochs: int = 200
  surrogate_hidden: tuple[int, ...] = (64, 32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingConfig:
  """Baseline and QAT fine-tune schedules (see hirelc_jax.training.loop.TrainConfig)."""
  baseline_epochs: Optional[float] = None   # None: the model's default schedule
  baseline_lr: Optional[float] = None
  finetune_epochs: float = 0.5
  finetune_lr: float = 2e-4
  finetune_patience: int = 2
  batch_size: int = 128


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  model: ModelConfig = ModelConfig()
  data: DataConfig = DataConfig()
  goal: GoalConfig = GoalConfig()
  hla: AgentConfig = AgentConfig(betas=(1.0, 2.0, 0.5), alpha=0.0, updates_first=16,
                                 updates_per_cycle=8, n_steps=32, n_envs=2, discount=0.0)
  lla: AgentConfig = AgentConfig(n_envs=4, updates_first=64, updates_per_cycle=32, discount=0.0)
  search: SearchConfig = SearchConfig()
  training: TrainingConfig = TrainingConfig()
  seed: int = 0
  output_dir: str = "runs"
  devices: Optional[int] = None      # devices the run's mesh spans (None: all, every host's)

  def validate(self) -> "Config":
    """Raises ValueError with one line naming the bad value and what to do: first every key's
    type and range (`config_rules`), then the choices among names and the rules joining keys."""
    config_rules.check(self)
    g = self.goal
    if g.min_bits > g.max_bits:
      raise ValueError(f"goal.min_bits={g.min_bits} is above goal.max_bits={g.max_bits}; lower it or raise max_bits")
    if g.quantization_type not in ("mixed", "int", "float"):
      raise ValueError(f"goal.quantization_type={g.quantization_type!r}; use mixed, int or float")
    if g.strategy is not None and g.strategy not in codes.GRANULARITIES[:4]:
      raise ValueError(f"goal.strategy={g.strategy!r}; use one of {', '.join(codes.GRANULARITIES[:4])}")
    for name, agent in (("hla", self.hla), ("lla", self.lla)):
      if not agent.algorithms or any(a not in ("ppo", "a2c") for a in agent.algorithms):
        raise ValueError(f"{name}.algorithms={agent.algorithms}; each must be ppo or a2c")
      if len(agent.betas) != len(agent.algorithms):
        raise ValueError(f"{name}.betas has {len(agent.betas)} entries for "
                         f"{len(agent.algorithms)} members; give one per member")
    if self.search.proposer not in PROPOSERS:
      raise ValueError(f"search.proposer={self.search.proposer!r}; use one of {', '.join(PROPOSERS)}")
    if self.search.floors not in FLOORS:
      raise ValueError(f"search.floors={self.search.floors!r}; use one of {', '.join(FLOORS)}")
    if self.search.accuracy_unit not in ACCURACY_UNITS:
      raise ValueError(f"search.accuracy_unit={self.search.accuracy_unit!r}; use one of {', '.join(ACCURACY_UNITS)}")
    if self.search.proposer != "agents" and self.search.signal != "error_table":
      raise ValueError(f"search.proposer={self.search.proposer!r} solves over the error table; "
                       f"use search.signal=error_table")
    if self.search.signal not in SIGNALS:
      raise ValueError(f"search.signal={self.search.signal!r}; use one of {', '.join(SIGNALS)}")
    return self


def to_dict(config) -> dict:
  """A JSON-ready dict (tuples become lists)."""
  return json.loads(json.dumps(dataclasses.asdict(config)))


def _build(cls, values: Mapping[str, Any], where: str):
  hints = typing.get_type_hints(cls)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  kwargs = {}
  for key, value in values.items():
    if key.startswith("_"):  # comments in preset files
      continue
    if key not in fields:
      raise ValueError(f"unknown config key {where}{key!r}; known keys: {', '.join(fields)}")
    hint = hints[key]
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
      kwargs[key] = _build(hint, value, f"{where}{key}.")
    elif typing.get_origin(hint) is tuple and isinstance(value, list):
      kwargs[key] = tuple(value)
    else:
      kwargs[key] = value
  return cls(**kwargs)   # a wrong type (a number for a section, a word for a number) stays for
                         # `Config.validate` to name


def from_dict(values: Mapping[str, Any], base: Optional[Config] = None) -> Config:
  """A Config from a (partial) nested dict applied over `base` (the defaults)."""
  merged = _merge(to_dict(base or Config()), values)
  return _build(Config, merged, "")


def _merge(base: dict, update: Mapping) -> dict:
  out = dict(base)
  for key, value in update.items():
    if isinstance(value, Mapping) and isinstance(out.get(key), dict):
      out[key] = _merge(out[key], value)
    else:
      out[key] = value
  return out


def save(config: Config, path: str | pathlib.Path) -> None:
  pathlib.Path(path).write_text(json.dumps(to_dict(config), indent=2) + "\n")


def load(path: str | pathlib.Path, base: Optional[Config] = None) -> Config:
  """Reads a JSON config file (partial trees are applied over `base`)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f"config file {path} does not exist")
  try:
    values = json.loads(path.read_text())
  except json.JSONDecodeError as err:
    raise ValueError(f"config file {path} is not valid JSON ({err.msg} at line {err.lineno})") from None
  return from_dict(values, base)


def preset_names() -> tuple[str, ...]:
  return tuple(sorted(p.name[:-5] for p in resources.files("hirelc_jax.configs").iterdir()
                      if p.name.endswith(".json")))


def preset(name: str, base: Optional[Config] = None) -> Config:
  """A named preset from configs/ (reachable from an installed wheel)."""
  if name not in preset_names():
    raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(preset_names())}")
  text = resources.files("hirelc_jax.configs").joinpath(f"{name}.json").read_text()
  return from_dict(json.loads(text), base)


def override(config: Config, assignments: Mapping[str, str]) -> Config:
  """Applies dotted `key=value` overrides; values are parsed as JSON, else taken as strings."""
  tree: dict = {}
  for dotted, raw in assignments.items():
    try:
      value = json.loads(raw)
    except (json.JSONDecodeError, TypeError):
      value = raw
    node = tree
    parts = dotted.split(".")
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = value
  return from_dict(tree, config)
