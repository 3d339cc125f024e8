"""Saving and restoring pytrees with orbax, with one-line errors for bad files."""

from __future__ import annotations

import json
import pathlib
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from hirelc_jax import distributed


def _alone() -> ocp.StandardCheckpointer:
  """A checkpointer that acts for this process alone (orbax would otherwise wait for every
  process at each save and restore; here every tree is host data, the same on all of them)."""
  me = jax.process_index()
  return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}, barrier_sync_key_prefix=f"process{me}"))


def save_tree(path: str | pathlib.Path, tree: Any, *, meta: dict | None = None) -> None:
  """Writes `tree` to directory `path` (atomically: a temp dir renamed at the end).

  With several processes, every one calls this with the same tree: process 0
  writes it and the others wait until it is written, so any may read it next.
  """
  path = pathlib.Path(path).absolute()
  if distributed.writes():
    _write(path, tree, meta)
  distributed.sync(f"saved {path}")


def _write(path: pathlib.Path, tree: Any, meta: dict | None) -> None:
  tmp = path.with_name(path.name + ".tmp")
  if tmp.exists():
    shutil.rmtree(tmp)
  tmp.mkdir(parents=True)
  with _alone() as ckpt:
    ckpt.save(tmp / "tree", jax.tree.map(np.asarray, tree))
    ckpt.wait_until_finished()
  (tmp / "meta.json").write_text(json.dumps(meta or {}, indent=2))
  if path.exists():
    shutil.rmtree(path)
  tmp.rename(path)


def load_tree(path: str | pathlib.Path, like: Any | None = None) -> Any:
  """Restores a tree saved by `save_tree` (or a plain orbax checkpoint directory).

  Args:
    path: the checkpoint directory.
    like: an example tree (arrays or ShapeDtypeStructs) to restore into; its
      structure and shapes are checked.

  Raises:
    ValueError: the directory is missing or does not hold a readable checkpoint.
  """
  path = pathlib.Path(path).absolute()
  item = path / "tree" if (path / "tree").exists() else path
  if not item.exists():
    raise ValueError(f"checkpoint {path} does not exist")
  try:
    with _alone() as ckpt:
      target = None if like is None else jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
          if not isinstance(x, jax.ShapeDtypeStruct) else x, like)
      return ckpt.restore(item, target)
  except Exception as err:  # orbax raises many types for a corrupt directory
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    raise ValueError(f"checkpoint {path} is unreadable or does not fit the model ({first[:200]})") from err


def load_meta(path: str | pathlib.Path) -> dict:
  """The metadata JSON written beside a tree by `save_tree` ({} if absent)."""
  meta = pathlib.Path(path).absolute() / "meta.json"
  if not meta.exists():
    return {}
  try:
    return json.loads(meta.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as err:
    raise ValueError(f"checkpoint {meta.parent} is unreadable (its meta.json is not JSON: "
                     f"{getattr(err, 'msg', err)})") from None
