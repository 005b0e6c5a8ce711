"""Faults of the host side with the own guest running: the disk's
filesystem fills up, stdout goes away, the tap device is deleted. The guest
gets an error status or the launcher ends with a one-line reason, or the
guest carries on; nothing hangs and nothing crashes.

The disk-full and tap tests need root (mount, tap devices): inside the
testbed we are root. Elsewhere they skip.
"""
from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from support import LGK, intact_records, launcher_argv, launcher_env, run_launcher

pytestmark = pytest.mark.kvm


def need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (inside the testbed we are)")


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 1 MiB tmpfs of our own."""
    need_root()
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "lguest-full", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def one_line(stderr: bytes | str) -> str:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
    assert text.count("\n") == 1 and text.startswith("launcher: ") and "Traceback" not in text, \
        text[-2000:]
    return text.strip()


# ---- disk full -------------------------------------------------------------------------
def test_disk_full_is_an_io_error_for_the_guest(small_tmpfs):
    """An 8 MiB sparse disk on a 1 MiB filesystem: lgk's records fill it,
    the write that does not fit gets status 1 (IOERR), and lgk ends the run
    saying so. Everything reported flushed before that is on the disk."""
    disk = small_tmpfs / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(8 << 20)
    p = run_launcher("--mem", "16M", "--block", str(disk), LGK, "records=77", timeout=300)
    out = p.stdout.decode(errors="replace")
    reason = one_line(p.stderr)
    m = re.fullmatch(r"launcher: guest crashed: records: (writing|flushing) record (\d+) "
                     r"got status 1 \(I/O error is 1\)", reason)
    assert m and p.returncode == 1, (reason, out[-1000:])
    failed_at = int(m.group(2))
    flushed = [int(n) for n in re.findall(r"^records: (\d+) flushed$", out, re.M)]
    assert flushed == list(range(failed_at)) and failed_at > 100, out[-500:]
    intact, why = intact_records(disk.read_bytes(), 77)
    assert intact >= failed_at, why
    assert os.path.getsize(disk) == 8 << 20           # the file kept its size


# ---- stdout closed ---------------------------------------------------------------------
def test_stdout_to_a_pipe_nobody_reads(tmp_path):
    r, w = os.pipe()
    os.close(r)
    try:
        start = time.monotonic()
        p = run_launcher("--mem", "16M", LGK, stdout=w, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(w)
    assert p.returncode == 1, p.stderr
    assert one_line(p.stderr) == ("launcher: guest killed: the console's output could not be "
                                  "written (Broken pipe)")
    assert time.monotonic() - start < 60


def test_stdout_closed_in_the_middle_of_a_run(tmp_path):
    """The reader goes away after a few lines: the launcher stops at the
    guest's next line, with the reason."""
    disk = tmp_path / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(8 << 20)
    proc = subprocess.Popen(launcher_argv("--mem", "16M", "--block", str(disk), LGK, "records"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=launcher_env())
    try:
        for line in proc.stdout:
            if line.startswith(b"records: 20 flushed"):
                break
        proc.stdout.close()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1
    assert one_line(err) == ("launcher: guest killed: the console's output could not be "
                             "written (Broken pipe)")


# ---- a tap that vanishes -----------------------------------------------------------------
def test_tap_deleted_under_a_running_guest():
    need_root()
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("no /dev/net/tun")
    before = set(os.listdir("/sys/class/net"))
    proc = subprocess.Popen(launcher_argv("--mem", "16M", "--tunnet", "10.77.0.1", LGK,
                                          "net=12"),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=launcher_env())
    try:
        sent_before = None
        for line in proc.stdout:
            m = re.match(rb"net: (\d+) frames sent", line)
            if m and int(m.group(1)) > 0:
                sent_before = int(m.group(1))
                break
        assert sent_before, "the guest never sent a frame"
        taps = sorted(set(os.listdir("/sys/class/net")) - before)
        assert len(taps) == 1, taps
        subprocess.run(["ip", "link", "del", taps[0]], check=True)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    m = re.search(rb"net: done: (\d+) frames sent", out)
    assert proc.returncode == 0 and m, (out[-500:], err)
    assert int(m.group(1)) > sent_before                # it went on sending, into nothing
    assert one_line(err).startswith(f"launcher: net0: the tap device {taps[0]} failed")
