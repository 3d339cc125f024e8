"""timm-style ViT state dicts: round trips, a numpy timm reference, clear errors."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from scipy.special import erf

from hirelc_jax import models
from hirelc_jax.models import checkpoint_io as cio


def _timm_forward(sd, x, depth, heads, patch):
  """A numpy transcription of timm's VisionTransformer.forward on a torch-layout state dict."""
  def linear(h, name):
    return h @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]

  def layer_norm(h, name):
    mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    return (h - mu) / np.sqrt(var + 1e-6) * sd[f"{name}.weight"] + sd[f"{name}.bias"]

  img = x.transpose(0, 3, 1, 2)                                     # NCHW, as torch.
  b, c, hh, ww = img.shape
  gh, gw = hh // patch, ww // patch
  patches = img.reshape(b, c, gh, patch, gw, patch).transpose(0, 2, 4, 1, 3, 5)
  w = sd["patch_embed.proj.weight"]                                 # [D, C, p, p]
  tok = np.einsum("bhwcij,dcij->bhwd", patches, w) + sd["patch_embed.proj.bias"]
  d = w.shape[0]
  tok = tok.reshape(b, gh * gw, d)
  h = np.concatenate([np.broadcast_to(sd["cls_token"], (b, 1, d)), tok], 1) + sd["pos_embed"]
  hd = d // heads
  for i in range(depth):
    y = layer_norm(h, f"blocks.{i}.norm1")
    qkv = linear(y, f"blocks.{i}.attn.qkv").reshape(b, -1, 3, heads, hd).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0] * hd ** -0.5, qkv[1], qkv[2]                    # [B, H, N, hd]
    a = q @ k.transpose(0, 1, 3, 2)
    a = np.exp(a - a.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = (a @ v).transpose(0, 2, 1, 3).reshape(b, -1, d)
    h = h + linear(o, f"blocks.{i}.attn.proj")
    y = linear(layer_norm(h, f"blocks.{i}.norm2"), f"blocks.{i}.mlp.fc1")
    y = 0.5 * y * (1 + erf(y / np.sqrt(2)))
    h = h + linear(y, f"blocks.{i}.mlp.fc2")
  return linear(layer_norm(h, "norm")[:, 0], "head")


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_round_trip(tmp_path, vit_mu, vit_mu_apply, suffix):
  spec, variables = vit_mu
  path = tmp_path / f"vit_mu{suffix}"
  cio.save_timm_vit(path, variables["params"], spec)
  loaded = cio.load_timm_vit(path, spec)
  assert set(loaded) == {"params"}
  jax.tree_util.tree_map(np.testing.assert_array_equal, loaded, jax.device_get(variables))
  x = np.random.default_rng(0).normal(size=(2, 28, 28, 1)).astype(np.float32)
  np.testing.assert_allclose(vit_mu_apply(loaded, x), vit_mu_apply(variables, x),
                             rtol=1e-6, atol=1e-6)


def test_file_uses_timm_names_and_matches_timm_forward(tmp_path, vit_mu, vit_mu_apply):
  spec, variables = vit_mu
  path = tmp_path / "m.safetensors"
  cio.save_timm_vit(path, variables["params"], spec)
  from safetensors.numpy import load_file
  sd = {k: v.astype(np.float64) for k, v in load_file(str(path)).items()}
  assert sd["blocks.0.attn.qkv.weight"].shape == (96, 32)
  assert sd["blocks.1.mlp.fc1.weight"].shape == (64, 32)
  assert sd["patch_embed.proj.weight"].shape == (32, 1, 4, 4)
  assert sd["pos_embed"].shape == (1, 50, 32) and sd["head.weight"].shape == (10, 32)
  assert "blocks.0.norm1.weight" in sd and "norm.bias" in sd
  assert len(sd) == len(cio.timm_key_map(2))
  x = np.random.default_rng(1).normal(size=(2, 28, 28, 1)).astype(np.float32)
  ref = _timm_forward(sd, x.astype(np.float64), depth=2, heads=2, patch=4)
  np.testing.assert_allclose(vit_mu_apply(variables, x), ref, rtol=1e-4, atol=1e-4)


def test_errors_name_the_key(tmp_path, vit_mu):
  spec, variables = vit_mu
  sd = cio.to_timm_state_dict(variables["params"], spec)
  broken = dict(sd)
  del broken["blocks.1.mlp.fc2.bias"]
  np.savez(tmp_path / "missing.npz", **broken)
  with pytest.raises(ValueError, match="missing key 'blocks.1.mlp.fc2.bias'"):
    cio.load_timm_vit(tmp_path / "missing.npz", spec)
  broken = dict(sd, **{"blocks.0.attn.qkv.weight": np.zeros((96, 16), np.float32)})
  np.savez(tmp_path / "shape.npz", **broken)
  with pytest.raises(ValueError, match=r"'blocks.0.attn.qkv.weight' has shape \(96, 16\)"):
    cio.load_timm_vit(tmp_path / "shape.npz", spec)
  with pytest.raises(ValueError, match="'pos_embed' has shape"):  # A different image size.
    other = models.build_model("vit_mu", num_classes=10, image_shape=(32, 32, 1))
    cio.from_timm_state_dict(sd, other)
  with pytest.raises(ValueError, match="not found"):
    cio.load_timm_vit(tmp_path / "absent.safetensors", spec)
  (tmp_path / "junk.safetensors").write_bytes(b"garbage")
  with pytest.raises(ValueError, match="junk.safetensors is unreadable"):
    cio.load_timm_vit(tmp_path / "junk.safetensors", spec)
  cnn_spec = models.build_model("cnn", num_classes=10, image_shape=(28, 28, 1))
  with pytest.raises(ValueError, match="need a ViT spec"):
    cio.from_timm_state_dict(sd, cnn_spec)
  extra = dict(sd, fc_norm_unused=np.zeros(3, np.float32))  # Unused keys are ignored.
  cio.from_timm_state_dict(extra, spec)
