"""Disks that are not plain writable files, with the own guest running:
one on a read-only filesystem (refused without ,ro, saying so; used with
it) and a block device (its size comes from seeking to its end: fstat
says 0). Both need root (mount, losetup); inside the testbed we are."""
from __future__ import annotations

import os
import subprocess

import pytest

from support import LGK, loop_device, run_launcher

pytestmark = pytest.mark.kvm


def need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (inside the testbed we are)")


def one_line(stderr: bytes) -> str:
    text = stderr.decode(errors="replace")
    assert text.count("\n") == 1 and text.startswith("launcher: ") and "Traceback" not in text, \
        text[-2000:]
    return text.strip()


def test_disk_on_a_read_only_filesystem(tmp_path):
    need_root()
    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "lguest-ro", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs")
    try:
        disk = mnt / "disk.img"
        disk.write_bytes(bytes(1 << 20))
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        p = run_launcher("--block", str(disk), LGK, timeout=60)
        assert p.returncode == 2 and one_line(p.stderr) == (
            f"launcher: --block {disk} is on a read-only filesystem: add ,ro to use it read-only")
        p = run_launcher("--mem", "16M", "--block", f"{disk},ro", LGK, timeout=240)
        assert p.returncode == 0 and b"selftest: blk_readonly ok" in p.stdout, p.stderr
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_block_device_as_the_disk(tmp_path):
    need_root()
    with loop_device(tmp_path) as (dev, backing):
        p = run_launcher("--mem", "16M", "--block", dev, LGK, "diskwrite", timeout=240)
    out = p.stdout.decode(errors="replace")
    assert p.returncode == 0, (out[-1500:], p.stderr)
    assert "virtio: block up: 8192 sectors (4096 KiB)" in out
    assert "selftest: blk_write_read ok" in out and "selftest: blk_past_end ok" in out
    assert backing.read_bytes()[:31] == b"lgk-disk sector 00000 boot 0000"   # it went to the file
