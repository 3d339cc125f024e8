"""The built wheel, installed non-editable into a fresh venv, works as the README says.

The venv gets the running interpreter's dependencies (jax, flax, ...) through a
.pth file naming its site-packages: `system_site_packages` would see the base
interpreter's packages instead, which are not these when the suite itself runs
in a venv. A plain path line in a .pth file is not scanned for .pth files of its
own, so an editable install of hirelc_jax there stays invisible.
"""

import os
import pathlib
import site
import subprocess
import sys
import sysconfig
import venv

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel_python(tmp_path_factory):
  """Python of a fresh venv holding the built wheel, with this interpreter's dependencies."""
  tmp = tmp_path_factory.mktemp("wheel")
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                  "-w", str(tmp / "dist"), str(ROOT)], check=True)
  wheel = next((tmp / "dist").glob("hirelc_jax-*.whl"))
  env_dir = tmp / "venv"
  venv.EnvBuilder(with_pip=False).create(env_dir)
  python = env_dir / "bin" / "python"
  purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           check=True, capture_output=True, text=True).stdout.strip()
  ours = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")} | {site.getusersitepackages()}
  (pathlib.Path(purelib) / "outer_dependencies.pth").write_text(
      "\n".join(sorted(p for p in ours if os.path.isdir(p))) + "\n")
  subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                  "--no-deps", str(wheel)], check=True)
  return python


def _user_env(**extra) -> dict:
  """The environment a user's shell has: no PYTHONPATH, no -P."""
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
  return {**env, **extra}


def test_wheel_installs_subpackages(wheel_python, tmp_path):
  probe = ("import hirelc_jax, hirelc_jax.compression.plan as p, hirelc_jax.agents as a, "
           "hirelc_jax.configs as c; print(p.__file__); print(a.__file__); print(c.__file__)")
  out = subprocess.run([str(wheel_python), "-c", probe], check=True, capture_output=True, text=True,
                       cwd=tmp_path, env=_user_env()).stdout.split()
  assert len(out) == 3
  venv_dir = str(wheel_python.parents[1])
  for path in out:
    assert path.startswith(venv_dir), f"{path} was not imported from the installed wheel"


def test_cli_help_from_the_repository_root(wheel_python):
  """The checkout's hirelc_jax/ shadows the wheel here (cwd comes first on sys.path)."""
  done = subprocess.run([str(wheel_python), "-m", "hirelc_jax.run", "-h"], cwd=ROOT,
                        capture_output=True, text=True, env=_user_env())
  assert done.returncode == 0, done.stderr
  assert "--model" in done.stdout


def test_smoke_run_from_the_repository_root(wheel_python, tmp_path, smoke_cache):
  """The smoke schedule end to end (one cycle); stderr is a pipe, so progress comes as whole lines."""
  out = tmp_path / "runs"
  done = subprocess.run([str(wheel_python), "-m", "hirelc_jax.run", "--model", "vit_mu",
                         "--dataset", "digits", "--schedule", "smoke", "--cycles", "1", "--output-dir", str(out)],
                        cwd=ROOT, capture_output=True, text=True,
                        env=_user_env(HIRELC_JAX_CACHE=str(smoke_cache)))
  assert done.returncode == 0, done.stderr[-3000:]
  assert (out / "vit_mu-digits-s0" / "report.json").is_file()
  assert (out / "vit_mu-digits-s0" / "model_export.npz").is_file()
  assert "\r" not in done.stderr, "progress bars redrew with carriage returns into a pipe"
  assert "%|" in done.stderr, "no progress line reached the log"
