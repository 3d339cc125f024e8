"""Two processes on localhost (`jax.distributed`, gloo): a SIGTERM to one stops both at the
same `interrupts.check`, and an error in one ends the other within seconds, not after JAX's
shutdown barrier (300 s)."""

import os
import socket
import subprocess
import sys
import textwrap
import time

# Process 1 gets SIGTERM (or raises) after a first barrier; both then call `check` and a
# collective in a loop, as a run's training chunks and events do.
SCRIPT = textwrap.dedent("""
  import os, signal, sys, time
  from hirelc_jax import distributed, interrupts, run
  pid, port, how = int(sys.argv[1]), sys.argv[2], sys.argv[3]
  distributed.initialize(f"localhost:{port}", 2, pid)

  def work():
    distributed.sync("start")
    if pid == 1 and how == "sigterm":
      os.kill(os.getpid(), signal.SIGTERM)
    if pid == 1 and how == "error":
      raise ValueError("bad value on process 1 alone")
    for i in range(600):
      interrupts.check()
      distributed.sync(f"step {i}")
      time.sleep(0.05)

  sys.exit(run.guarded(work, False))
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _run_pair(how: str):
  port = str(_free_port())
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(i), port, how], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
  start = time.time()
  try:
    errs = [p.communicate(timeout=90)[1] for p in procs]
  finally:
    for p in procs:
      p.kill()
  return [p.returncode for p in procs], errs, time.time() - start


def test_sigterm_to_one_process_stops_both_at_the_same_check():
  codes, errs, _ = _run_pair("sigterm")
  assert codes == [143, 143], errs
  assert all("terminated (SIGTERM)" in e and "--resume" in e for e in errs), errs


def test_an_error_in_one_process_ends_the_other_within_seconds():
  codes, errs, seconds = _run_pair("error")
  assert codes[1] == 2 and "bad value on process 1 alone" in errs[1], errs
  assert codes[0] != 0 and seconds < 60, (codes, seconds, errs[0][-2000:])
