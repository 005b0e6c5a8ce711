"""scripts/plot-trace: a --trace file becomes a PNG with both panels; a
file that is not a trace is refused with one line."""
import json
import subprocess

import pytest

from launcher import traceplot


def fake_trace(path, n=500):
    kinds = ["LHCALL_SET_PTE", "kick", "trap 13", "trap 14", "LHCALL_NOTIFY"] + \
            [f"rare {i}" for i in range(8)]
    events = [{"name": kinds[i % len(kinds)], "ph": "X", "pid": 1, "tid": 1,
               "ts": i * 900.0, "dur": 20.0 + (i % 37) * 11.0, "args": {}} for i in range(n)]
    path.write_text(json.dumps(events))
    return events


def test_series_bins_the_top_kinds_and_sums_the_rest(tmp_path):
    events = fake_trace(tmp_path / "t.json")
    times, lines = traceplot.series(events)
    assert len(lines) == traceplot.TOP_KINDS + 1 and "other" in lines
    assert sum(sum(v) for v in lines.values()) == len(events)
    assert times[1] - times[0] == traceplot.BIN_MS
    assert len(times) == int(events[-1]["ts"] / 1000 // traceplot.BIN_MS) + 1


def test_the_script_writes_a_png(tmp_path):
    fake_trace(tmp_path / "t.json")
    out = tmp_path / "plot.png"
    result = subprocess.run(["scripts/plot-trace", str(tmp_path / "t.json"),
                             "-o", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10000


@pytest.mark.parametrize("content", ["not json", "{}", '[{"name": "x"}]'])
def test_not_a_trace_is_refused(tmp_path, content):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(SystemExit, match="plot-trace: .*(not a trace|not a launcher)"):
        traceplot.main([str(bad)])


@pytest.mark.parametrize("trace,png", [
    ("trace.json", "trace.png"), ("./trace", "./trace.png"), ("v1.0/trace", "v1.0/trace.png"),
    ("runs/v1.0/boot.json", "runs/v1.0/boot.png"), (".hidden", ".hidden.png"),
])
def test_the_png_goes_beside_the_trace_with_its_suffix_replaced(trace, png):
    assert traceplot.default_output(trace) == png


def test_an_empty_trace_is_one_sentence(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    result = subprocess.run(["scripts/plot-trace", str(empty)],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == f"plot-trace: {empty} holds no exits, so there is nothing to draw\n"
    assert not (tmp_path / "empty.png").exists()
