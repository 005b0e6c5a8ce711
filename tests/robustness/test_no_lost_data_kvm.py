"""No lost data: a block write the guest saw acknowledged and flushed is on
the disk after the launcher is killed with SIGKILL right after.

lgk's `records=SEED` mode writes numbered records (1-8 sectors each, with a
CRC), FLUSHes after each and only then prints `records: N flushed`. We read
its console line by line and, as soon as it has reported a chosen number,
SIGKILL the launcher; every record up to the last one reported must then be
on the disk, intact (tests/robustness/support.py reads them back). Rounds
pick different moments (and both page-table formats); LGUEST_KILL_ROUNDS
asks for more.
"""
from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import time

import pytest

from support import FLUSHED, LGK, LGK_PAE, intact_records, launcher_argv, launcher_env

pytestmark = pytest.mark.kvm

DISK = 8 << 20
ROUNDS = int(os.environ.get("LGUEST_KILL_ROUNDS", "4"))


def kill_after_report(disk: str, seed: int, target: int, kernel: str,
                      limit: float = 180) -> tuple[int, list[bytes]]:
    """Run records mode until the guest reports record `target` (or later)
    flushed, SIGKILL the launcher at once; the last number reported."""
    proc = subprocess.Popen(launcher_argv("--mem", "16M", "--block", disk, kernel,
                                          f"records={seed}"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=launcher_env())
    last, seen, buf = -1, [], b""
    deadline = time.monotonic() + limit
    try:
        fd = proc.stdout.fileno()
        while last < target:
            if time.monotonic() > deadline:
                pytest.fail(f"record {target} never reported in {limit:g}s; last {last}; "
                            f"tail {seen[-5:]!r}")
            if not select.select([fd], [], [], 1)[0]:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                pytest.fail(f"the launcher ended (status {proc.wait()}) before record {target}:"
                            f" {proc.stderr.read().decode()[-500:]} / {seen[-5:]!r}")
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                seen.append(line)
                m = FLUSHED.match(line)
                if m:
                    last = int(m.group(1))
        os.kill(proc.pid, signal.SIGKILL)     # right after the report we acted on
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return last, seen


def test_flushed_records_survive_sigkill(tmp_path):
    rng = random.Random(os.environ.get("LGUEST_KILL_SEED", "10"))
    totals = []
    for i in range(ROUNDS):
        disk = tmp_path / f"disk{i}.img"
        with open(disk, "wb") as f:
            f.truncate(DISK)
        seed = rng.randrange(1, 1 << 31)
        target = [0, rng.randrange(1, 40), rng.randrange(40, 150), rng.randrange(150, 400)][i % 4]
        kernel = (LGK, LGK_PAE)[i % 2]
        last, seen = kill_after_report(str(disk), seed, target, kernel)
        intact, why = intact_records(disk.read_bytes(), seed)
        assert intact > last, (f"round {i}: record {last} was reported flushed, but only "
                               f"{intact} records are intact: {why}")
        totals.append((target, last, intact))
    print(f"\nno-lost-data: {len(totals)} kills; (target, last reported, intact on disk): {totals}")
