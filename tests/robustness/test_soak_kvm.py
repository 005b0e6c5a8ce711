"""Soak: scripts/soak runs the own guest looping its self-tests and block
I/O, rebooting every few seconds, and samples the launcher's RSS and open
descriptors; it fails on a guest failure or on growth of either. A minute
here; LGUEST_SOAK_MINUTES=30 for the long run."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from support import ROOT, launcher_env

pytestmark = [pytest.mark.kvm, pytest.mark.once]

MINUTES = float(os.environ.get("LGUEST_SOAK_MINUTES", "1"))


def test_soak_without_leaks():
    cmd = [sys.executable, os.path.join(ROOT, "scripts", "soak"), "--minutes", f"{MINUTES:g}",
           "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=launcher_env(),
                       stdin=subprocess.DEVNULL, timeout=MINUTES * 60 + 300)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    assert lines, p.stdout[-2000:] + p.stderr[-2000:]
    r = json.loads(lines[-1])
    print("\n" + "\n".join(l for l in p.stdout.splitlines() if l.startswith("soak:")))
    assert r["ok"] and p.returncode == 0, "\n".join(r["problems"] + r["guest_failed"]
                                                   + r["guest_tail"] + r["launcher_stderr"])
    # It must really have soaked: several boots, many rounds, and samples
    # across them (so the comparison above had something to compare).
    assert r["boots"] >= 3 and r["rounds"] >= 10 and r["samples"] >= 20, r
