"""Saving and resuming the search state after every completed cycle."""

from __future__ import annotations

import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np

from hirelc_jax import search
from hirelc_jax.state import SearchState
from hirelc_jax.agents import budget_env
from hirelc_jax.training import checkpoint


def _is_key(x) -> bool:
  return jnp.issubdtype(getattr(x, "dtype", np.float32), jax.dtypes.prng_key)


def _saveable(tree):
  """Typed PRNG keys become their raw key data (orbax stores plain arrays); abstract leaves
  (ShapeDtypeStruct) become the abstract key data."""
  def plain(x):
    if not _is_key(x):
      return x
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.eval_shape(jax.random.key_data, x)
    return jax.random.key_data(x)
  return jax.tree.map(plain, tree)


def _restored(tree, like):
  return jax.tree.map(lambda x, ref: jax.random.wrap_key_data(x) if _is_key(ref) else x, tree, like)


def save_state(path: pathlib.Path, state: SearchState, tuned: dict, cycle: int) -> None:
  tree = {"hla": state.hla, "lla": state.lla, "surrogate": state.surrogate,
          "plan": state.plan, "tuned": tuned}
  meta = {"cycle": cycle, **state.meta()}
  checkpoint.save_tree(path, _saveable(tree), meta=json.loads(json.dumps(meta, default=float)))


def load_state(path: pathlib.Path, like: dict) -> tuple[SearchState, dict, int]:
  tree = _restored(checkpoint.load_tree(path, _saveable(like)), like)
  meta = checkpoint.load_meta(path)
  try:
    state = SearchState.from_meta(meta, tree["hla"], tree["lla"], tree["surrogate"], tree["plan"])
    return state, tree["tuned"], meta["cycle"]
  except (KeyError, TypeError) as err:
    raise ValueError(f"checkpoint {pathlib.Path(path).absolute()} is unreadable (its meta.json lacks "
                     f"{err})") from None


def latest_cycle(ckpt_dir: pathlib.Path) -> int:
  """Number of completed cycles with a checkpoint (0 if none; `cycle_N.tmp` is one half-written)."""
  done = [int(m.group(1)) for p in ckpt_dir.glob("cycle_*")
          if (m := re.fullmatch(r"cycle_(\d+)", p.name)) and (p / "meta.json").exists()]
  return max(done, default=0)


def resume_latest(search_, state: SearchState, ckpt_dir: pathlib.Path, key, base: dict, warn):
  """(the state after the latest readable cycle, its number; 0 and `state` if none).

  A checkpoint that cannot be read is moved aside to `corrupt_cycle_N` (kept, not deleted),
  `warn` says so in one line, and the cycle before it is tried.
  """
  done = latest_cycle(ckpt_dir)
  while done:
    path = ckpt_dir / f"cycle_{done}"
    try:
      restored, _, _ = resume_state(search_, state, path, key, base)
      return restored, done
    except ValueError as err:
      aside = ckpt_dir / f"corrupt_cycle_{done}"
      while aside.exists():
        aside = aside.with_name(aside.name + "_")
      path.rename(aside)
      warn(f"{err}; moved it to {aside} and resuming from cycle {latest_cycle(ckpt_dir)}")
      done = latest_cycle(ckpt_dir)
  return state, 0


def resume_state(search_, state: SearchState, path: pathlib.Path, key, base: dict):
  """Loads a cycle checkpoint into the structure the agents' states have (shapes only:
  `jax.eval_shape` of their init, nothing is computed)."""
  config, setup = search_.config, search_.setup
  hla_params = search.hla_params(config, search_.block_sensitivity)
  lla_params = search.lla_params(
      config, budget_env.decode_budgets(
          jnp.zeros(setup.kmap.num_blocks, jnp.int32), jnp.asarray(search_.block_sensitivity),
          search_.hla.member(hla_params)),
      setup.kmap, search_.kernel_sensitivity, search_.signal(state, base["eval"]),
      baseline_accuracy=base["eval"], surrogate_ready=False)
  agents = config.search.proposer != "ilp"
  abstract = lambda init, params: jax.eval_shape(lambda: init(key, params))
  like = {"hla": abstract(search_.hla.init, hla_params) if config.search.high_level and agents else None,
          "lla": abstract(search_.lla.init, lla_params) if agents else None,
          "surrogate": state.surrogate, "plan": state.plan, "tuned": setup.variables}
  return load_state(path, like)
