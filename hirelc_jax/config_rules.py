"""Every config key's type and range, checked in one place.

`check(config)` walks the frozen Config tree: each leaf must have its field's
type (an int field takes only integers, a float field only finite numbers, a
tuple field a list of its element type) and lie in its range below. Any
violation raises one ValueError line naming the dotted key, the value and
what is allowed. Choices among names and rules that join two keys stay in
`Config.validate`, which calls this first.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing

from hirelc_jax.compression import codes

# dotted key (an agent key applies to hla. and lla.) -> (low, high, low_open, high_open); None: unbounded
_GE0, _GE1, _GT0 = (0, None, False, False), (1, None, False, False), (0, None, True, False)
RANGES = {
    "model.patch_size": _GE1,
    "data.val_fraction": (0, 1, True, True),
    "data.limit": _GE1,
    "goal.target_accuracy_drop": (0, 100, False, False),
    "goal.target_compression": (1, 1000, False, False),
    "goal.min_bits": (codes.MIN_BITS, codes.MAX_BITS, False, False),
    "goal.max_bits": (codes.MIN_BITS, codes.MAX_BITS, False, False),
    "goal.max_prune": (0, 1 - codes.MIN_KEEP, False, False),
    "agent.betas": _GE0, "agent.alpha": _GE0, "agent.gamma": _GE0, "agent.lr": (0, 1, True, False),
    "agent.n_envs": _GE1, "agent.n_steps": _GE1, "agent.updates_first": _GE1,
    "agent.updates_per_cycle": _GE0, "agent.ent_coef": _GE0, "agent.discount": (0, 1, False, False),
    "search.cycles": (1, 1000, False, False),
    "search.sensitivity_samples": _GE1,
    "search.warmup_samples": _GE0,
    "search.screen": _GE1,
    "search.escalate": (1, 100, False, False),
    "search.margin_se": (0, 10, False, False),
    "search.escalate_margin_se": (0, 10, False, False),
    "search.eval_samples": _GE1,
    "search.surrogate_epochs": _GE1,
    "search.surrogate_hidden": _GE1,
    "training.baseline_epochs": _GT0,
    "training.baseline_lr": (0, 1, True, False),
    "training.finetune_epochs": _GT0,
    "training.finetune_lr": (0, 1, True, False),
    "training.finetune_patience": _GE0,
    "training.batch_size": _GE1,
    "seed": (0, 2**31 - 1, False, False),
    "devices": _GE1,
}
_AGENT_SECTIONS = ("hla", "lla")


def check(config) -> None:
  """Raises ValueError (one line) unless every leaf of `config` has its type and range."""
  _walk(config, "")


def _walk(node, where: str) -> None:
  hints = typing.get_type_hints(type(node))
  for f in dataclasses.fields(node):
    key, value, hint = where + f.name, getattr(node, f.name), hints[f.name]
    if dataclasses.is_dataclass(hint):
      if not dataclasses.is_dataclass(value):
        raise ValueError(f"config key {key} is a section, not {value!r}; set its keys (e.g. {key}."
                         f"{dataclasses.fields(hint)[0].name}=...)")
      _walk(value, key + ".")
      continue
    _check_type(key, value, hint)
    bounds = RANGES.get(key) or RANGES.get("agent." + f.name if where[:-1] in _AGENT_SECTIONS else "")
    if bounds is not None and value is not None:
      for item in (value if isinstance(value, tuple) else (value,)):
        _check_range(key, value, item, bounds)


def _check_type(key: str, value, hint) -> None:
  args = typing.get_args(hint)
  if typing.get_origin(hint) in (typing.Union, types.UnionType):     # Optional[X]
    if value is None:
      return
    hint = next(a for a in args if a is not type(None))
    args = typing.get_args(hint)
  if typing.get_origin(hint) is tuple:
    if not isinstance(value, tuple):
      raise ValueError(f"config key {key}={value!r} must be a list of {_name(args[0])}s, e.g. {key}=[...]")
    for item in value:
      if not _is(item, args[0]):
        raise ValueError(f"config key {key}={list(value)!r} must be a list of {_name(args[0])}s; "
                         f"{item!r} is not one")
    return
  if not _is(value, hint):
    raise ValueError(f"config key {key}={value!r} must be {_name(hint, article=True)}")


def _is(value, hint) -> bool:
  if hint is bool:
    return isinstance(value, bool)
  if hint is int:
    return isinstance(value, int) and not isinstance(value, bool)
  if hint is float:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
  return isinstance(value, hint)


def _name(hint, article: bool = False) -> str:
  name = {bool: "true or false", int: "integer", float: "finite number", str: "string"}.get(hint, str(hint))
  if not article or hint is bool:
    return name
  return ("an " if name[0] in "aeiou" else "a ") + name


def _check_range(key: str, value, item, bounds) -> None:
  low, high, low_open, high_open = bounds
  bad = (low is not None and (item <= low if low_open else item < low)) or \
        (high is not None and (item >= high if high_open else item > high))
  if bad:
    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    allowed = f"in {lo}, {hi}" if low is not None and high is not None else \
        (f"{'>' if low_open else '>='} {low:g}" if low is not None else f"{'<' if high_open else '<='} {high:g}")
    shown = list(value) if isinstance(value, tuple) else value
    raise ValueError(f"config key {key}={shown!r} must be {allowed}")
