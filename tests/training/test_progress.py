"""Progress bars written to a log: whole lines, rate-limited, the final state last."""

import io

from hirelc_jax.training import progress as P


class _Clock:
  def __init__(self):
    self.t = 0.0

  def __call__(self):
    return self.t


def test_a_log_gets_one_line_per_interval_and_the_end(monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(P.time, "monotonic", clock)
  log = io.StringIO()
  bar = P.progress(total=1000, desc="fine-tune", file=log)
  assert isinstance(bar, P.LogLines)
  for i in range(1000):  # 1000 updates over 50 simulated seconds
    clock.t = i * 0.05
    bar.update(1)
    bar.set_postfix(loss=f"{i:.1f}")  # tqdm refreshes on every postfix
  bar.close()
  text = log.getvalue()
  lines = text.splitlines()
  assert "\r" not in text
  # the start, one line per 10 s of the 50 (t = 10, 20, 30, 40), and the last update
  assert len(lines) == 6, lines
  assert lines[0].startswith("fine-tune:   0%") and lines[-1].startswith("fine-tune: 100%")
  assert "1000/1000" in lines[-1]


def test_a_bar_closed_early_prints_where_it_stopped(monkeypatch):
  monkeypatch.setattr(P.time, "monotonic", lambda: 0.0)
  log = io.StringIO()
  bar = P.progress(total=100, desc="train", file=log)
  bar.update(37)  # within the interval: not printed yet
  bar.close()     # an early stop
  lines = log.getvalue().splitlines()
  assert len(lines) == 2 and "37/100" in lines[-1] and "\r" not in log.getvalue()


def test_a_terminal_keeps_the_redrawn_bar():
  class Tty(io.StringIO):
    def isatty(self):
      return True

  bar = P.progress(total=3, desc="x", file=Tty())
  assert not isinstance(bar, P.LogLines)
  bar.close()


def test_disabled_bars_print_nothing():
  log = io.StringIO()
  bar = P.progress(total=3, desc="x", disable=True, file=log)
  bar.update(3)
  bar.close()
  assert log.getvalue() == ""
