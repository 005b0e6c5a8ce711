"""Shared by the robustness tests: where the own guest is, running the
launcher as a command, and reading back what lgk's `records` mode wrote.

The record format is lgk's (images/lgk/devtest.c, "records"); it is
re-implemented here from the description, not from the C, so the two check
each other: record n is 1 + n % 8 sectors and follows record n - 1 from
sector 0, and holds

    0   b"LGKREC01"
    8   u32 n
    12  u32 its length in sectors
    16  u32 the run's seed
    20  payload: little-endian 32-bit words of xorshift32 (13, 17, 5),
        started from (n + 1) * 0x9E3779B9 ^ seed (1 if that is 0)
    -4  u32 CRC-32 (zlib's) of everything before it
"""
from __future__ import annotations

import contextlib
import os
import re
import struct
import subprocess
import sys
import zlib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "launcher", "data")
LGK = os.path.join(DATA, "lgk.bzImage")
LGK_PAE = os.path.join(DATA, "lgk-pae.bzImage")
SECTOR = 512
MAGIC = b"LGKREC01"
FLUSHED = re.compile(rb"^records: (\d+) flushed$")


def launcher_argv(*args: str) -> list[str]:
    """The launcher as a command, never re-running itself in the testbed
    (the kvm tests already run where KVM works)."""
    return [sys.executable, "-m", "launcher", "--no-testbed", *args]


def launcher_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run_launcher(*args: str, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    """Run to the end; a launcher still running after `timeout` has hung,
    which raises subprocess.TimeoutExpired (the child is killed)."""
    kw.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(launcher_argv(*args), capture_output="stdout" not in kw,
                          timeout=timeout, env=launcher_env(), **kw)


# ---- records ---------------------------------------------------------------------
@contextlib.contextmanager
def loop_device(tmp_path, size: int = 4 << 20):
    """A 4 MiB file attached to a loop device: yields (device, backing file).
    Skips the test where no loop device can be had (fails it under CI, where
    every kvm test must run: the testbed loads the loop module)."""
    import pytest
    backing = tmp_path / "backing.img"
    with open(backing, "wb") as f:
        f.truncate(size)
    r = subprocess.run(["losetup", "--find", "--show", str(backing)], capture_output=True,
                       text=True)
    if r.returncode:
        why = f"no loop device: {r.stderr.strip()}"
        pytest.fail(why) if os.environ.get("CI") else pytest.skip(why)
    dev = r.stdout.strip()
    try:
        yield dev, backing
    finally:
        subprocess.run(["losetup", "-d", dev])


def xorshift32(x: int) -> int:
    x ^= (x << 13) & 0xFFFFFFFF
    x ^= x >> 17
    x ^= (x << 5) & 0xFFFFFFFF
    return x


def record_sectors(n: int) -> int:
    return 1 + n % 8


def make_record(n: int, seed: int) -> bytes:
    """Record n as lgk writes it."""
    length = record_sectors(n) * SECTOR
    x = ((n + 1) * 0x9E3779B9 ^ seed) & 0xFFFFFFFF or 1
    words = []
    for _ in range((length - 24) // 4):
        x = xorshift32(x)
        words.append(x)
    body = MAGIC + struct.pack("<III", n, record_sectors(n), seed) + struct.pack(
        f"<{len(words)}I", *words)
    return body + struct.pack("<I", zlib.crc32(body))


def intact_records(disk: bytes, seed: int) -> tuple[int, str]:
    """Walk the disk from sector 0: how many records are there intact and in
    order (0, 1, 2 ...), and why the walk stopped."""
    at = n = 0
    while True:
        length = record_sectors(n) * SECTOR
        got = disk[at:at + length]
        if len(got) < length:
            return n, f"the disk ends before record {n}"
        if got[:8] != MAGIC:
            return n, f"no record at byte {at} (expected record {n})"
        number, sectors, their_seed = struct.unpack_from("<III", got, 8)
        if (number, sectors, their_seed) != (n, record_sectors(n), seed):
            return n, (f"at byte {at}: record {number} of {sectors} sectors, seed "
                       f"{their_seed}; expected record {n} of {record_sectors(n)}, seed {seed}")
        if zlib.crc32(got[:-4]) != struct.unpack_from("<I", got, length - 4)[0]:
            return n, f"record {n} at byte {at}: bad CRC"
        if got != make_record(n, seed):
            return n, f"record {n} at byte {at}: payload differs"
        at += length
        n += 1
