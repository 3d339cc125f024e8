"""report.md and the CLI table show the export file's size beside the counted storage."""

from hirelc_jax import report


def test_headline_shows_file_payload_header_and_counted_bytes():
  r = {"export": {"path": "/tmp/m.npz", "file_bytes": 18_900, "payload_bytes": 17_388,
                  "header_bytes": 1_000, "storage_bytes": 17_388.0}}
  text = report.render_markdown(r)
  line = next(l for l in text.splitlines() if "Export file on disk" in l)
  assert "(18,900 B) = payload 17,388 B + header 1,000 B + .npz members 512 B" in line
  assert line.rstrip(" |").endswith("(17,388 B)")
  assert "counted" in report.final_table(r)


def test_headline_without_the_parts_keeps_both_sizes():
  lines = report.render_markdown({"export": {"file_bytes": 2_123_456, "storage_bytes": 2.0e6}}).splitlines()
  line = next(l for l in lines if "Export file on disk" in l)
  assert "(2,123,456 B) vs" in line and "= payload" not in line


def test_headline_shows_the_bytes_a_slim_model_drops():
  r = {"export": {"file_bytes": 18_900, "storage_bytes": 17_388.0, "dead_rows_bytes": 4_096.0}}
  line = next(l for l in report.render_markdown(r).splitlines() if "made dead" in l)
  assert "(4,096 B)" in line
  line = next(l for l in report.render_markdown({"export": {}}).splitlines() if "made dead" in l)
  assert "(" not in line.split("|")[-2]  # not recorded: shown as missing, not as 0
