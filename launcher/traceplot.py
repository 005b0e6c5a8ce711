"""Plot a ``--trace`` file: where a boot spends its exits.

    scripts/plot-trace trace.json [-o trace.png]

The picture goes next to the trace, its name with the suffix replaced
(``runs/v1.0/boot.json`` -> ``runs/v1.0/boot.png``; ``./trace`` ->
``./trace.png``).

Two panels in one PNG: exits per 100 ms over the run, one line per kind of
exit (the eight most frequent; the rest summed as "other"), and a histogram
of how long the Host took to handle each exit, on a log scale. Needs
matplotlib (scripts/install-deps puts it in the clone's .venv).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter

TOP_KINDS = 8
BIN_MS = 100


def load(path: str) -> list[dict]:
    try:
        with open(path) as f:
            events = json.load(f)
    except OSError as exc:
        raise SystemExit(f"plot-trace: cannot read {path}: {exc.strerror}")
    except json.JSONDecodeError as exc:
        raise SystemExit(f"plot-trace: {path} is not a trace file ({exc.msg})")
    if not isinstance(events, list) or not all(
            isinstance(e, dict) and {"name", "ts", "dur"} <= e.keys() for e in events):
        raise SystemExit(f"plot-trace: {path} is not a launcher --trace file")
    if not events:
        raise SystemExit(f"plot-trace: {path} holds no exits, so there is nothing to draw")
    return events


def series(events: list[dict]) -> tuple[list[float], dict[str, list[int]]]:
    """Bin start times (ms) and, per kind, exits in each bin."""
    counts = Counter(e["name"] for e in events)
    top = [k for k, _ in counts.most_common(TOP_KINDS)]
    nbins = int(max((e["ts"] for e in events), default=0) / 1000 // BIN_MS) + 1
    lines = {k: [0] * nbins for k in top}
    if len(counts) > len(top):
        lines["other"] = [0] * nbins
    for e in events:
        kind = e["name"] if e["name"] in lines else "other"
        lines[kind][int(e["ts"] / 1000 // BIN_MS)] += 1
    return [i * BIN_MS for i in range(nbins)], lines


def plot(events: list[dict], out: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plot-trace: needs matplotlib (scripts/install-deps installs it "
                         "into .venv; or pip install matplotlib)")
    times, lines = series(events)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8))
    for kind, values in lines.items():
        top.plot(times, values, label=f"{kind} ({sum(values)})", linewidth=1)
    top.set_xlabel("time since the launcher started (ms)")
    top.set_ylabel(f"exits per {BIN_MS} ms")
    top.set_title(f"{len(events)} exits by kind")
    top.legend(fontsize="small", ncol=2)
    durations = [max(e["dur"], 0.01) for e in events]
    lo, hi = min(durations, default=0.01), max(durations, default=1.0)
    edges = [lo * (hi / lo) ** (i / 60) for i in range(61)] if hi > lo else 10
    bottom.hist(durations, bins=edges)
    bottom.set_xscale("log")
    bottom.set_yscale("log")
    bottom.set_xlabel("time to handle one exit (us)")
    bottom.set_ylabel("exits")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def default_output(trace: str) -> str:
    """The trace's own path with its suffix (if any) replaced by .png."""
    return os.path.splitext(trace)[0] + ".png"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="plot-trace", description=__doc__.split("\n")[0])
    p.add_argument("trace", help="a file written by `launcher --trace`")
    p.add_argument("-o", "--output", help="the PNG to write (default: TRACE with .png)")
    args = p.parse_args(argv)
    out = args.output or default_output(args.trace)
    plot(load(args.trace), out)
    print(f"plot-trace: wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
