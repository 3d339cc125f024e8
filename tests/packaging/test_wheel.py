"""A built wheel, installed into a fresh venv (not editable), imports every subpackage."""

import os
import pathlib
import subprocess
import sys
import venv

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_installs_subpackages(tmp_path):
  wheel_dir = tmp_path / "dist"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                  "-w", str(wheel_dir), str(ROOT)], check=True)
  wheel = next(wheel_dir.glob("hirelc_jax-*.whl"))
  env_dir = tmp_path / "venv"
  venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
  python = env_dir / "bin" / "python"
  subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                  "--no-deps", str(wheel)], check=True)
  probe = ("import hirelc_jax, hirelc_jax.compression.plan as p, hirelc_jax.agents as a, "
           "hirelc_jax.configs as c; print(p.__file__); print(a.__file__); print(c.__file__)")
  out = subprocess.run([str(python), "-c", probe], check=True, capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": ""}).stdout.split()
  assert len(out) == 3
  for path in out:
    assert str(env_dir) in path, f"{path} was not imported from the installed wheel"
