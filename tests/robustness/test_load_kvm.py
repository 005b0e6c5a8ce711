"""Load: 20 own guests at once (LGUEST_LOAD_GUESTS for another number), each
a launcher process with its own disk, all started together; every one must
power off (exit 0) with all its self-tests, device checks included, passed.
In the testbed they share one emulated CPU, where each guest alone takes
tens of seconds: there the default is 8, still guests whose timer and
device threads are starved in turn, in a quarter of CI's time."""
from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from support import LGK, LGK_PAE, launcher_argv, launcher_env

pytestmark = [pytest.mark.kvm, pytest.mark.once]

GUESTS = int(os.environ.get("LGUEST_LOAD_GUESTS",
                            "8" if os.environ.get("LGUEST_IN_TESTBED") else "20"))
MEM = os.environ.get("LGUEST_LOAD_MEM", "16M")


def mem_available_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 0


def test_twenty_guests_at_once(tmp_path):
    procs = []
    started = time.monotonic()
    for i in range(GUESTS):
        disk = tmp_path / f"disk{i}.img"
        with open(disk, "wb") as f:
            f.truncate(1 << 20)
        out = open(tmp_path / f"out{i}.txt", "wb")
        err = open(tmp_path / f"err{i}.txt", "wb")
        procs.append((subprocess.Popen(
            launcher_argv("--mem", MEM, "--timeout", "1500", "--block", str(disk), "--rng",
                          (LGK, LGK_PAE)[i % 2], "diskwrite"),
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=launcher_env()), out, err))
    low = mem_available_kib()
    deadline = started + 1800
    while any(p.poll() is None for p, _, _ in procs) and time.monotonic() < deadline:
        low = min(low, mem_available_kib())
        time.sleep(1)
    for p, out, err in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        out.close()
        err.close()
    elapsed = time.monotonic() - started
    problems = []
    for i, (p, _, _) in enumerate(procs):
        text = (tmp_path / f"out{i}.txt").read_text(errors="replace")
        errs = (tmp_path / f"err{i}.txt").read_text(errors="replace")
        m = re.search(r"selftest: (\d+) passed, (\d+) failed", text)
        failed_lines = [l for l in text.splitlines() if " FAILED " in l]
        if p.returncode != 0 or not m or m.group(2) != "0" or int(m.group(1)) < 45:
            problems.append(f"guest {i}: status {p.returncode}, "
                            f"{m.group(0) if m else 'no summary'}; {failed_lines[:3]} "
                            f"{errs.strip()[-300:]}")
    print(f"\nload: {GUESTS} guests of {MEM} at once, all done in {elapsed:.0f}s; "
          f"lowest MemAvailable {low // 1024} MiB")
    assert not problems, "\n".join(problems)
