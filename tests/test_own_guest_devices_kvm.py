"""The own guest (images/lgk) with devices on the lguest bus, end to end:
its virtio drivers' self-tests, data that outlives a boot, the console's
input, the block benchmark, and the hostile modes (every one must end with
the Host killing the guest and saying why, never a hang or a traceback)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import pytest

from kvm_support import require_kvm

pytestmark = pytest.mark.kvm

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                    "launcher", "data")
LGK = os.path.join(DATA, "lgk.bzImage")
LGK_PAE = os.path.join(DATA, "lgk-pae.bzImage")
SECTOR = 512
RECORD_SECTORS = 128                 # lgk's record: the disk's first 64 KiB
DISK_SIZE = 8 << 20
DEVICE_CHECKS = ("console_virtio", "blk_persist", "blk_write_read", "blk_flush",
                 "blk_past_end", "blk_get_id", "blk_unsupported", "rng_bytes", "virtio_irqs")


def launcher(*args: str, input: str | None = None, guest_timeout: float = 60,
             timeout: float = 240, fast_paths: bool | None = None) -> subprocess.CompletedProcess:
    """Run the launcher with --timeout as a safety net; a launcher that
    outlives even `timeout` has hung, which fails the test. ``fast_paths``
    overrides LGUEST_FAST_PATHS for a test about one of the two ways."""
    require_kvm()
    cmd = [sys.executable, "-m", "launcher", "--timeout", f"{guest_timeout:g}", *args]
    env = None
    if fast_paths is not None:
        env = dict(os.environ, LGUEST_FAST_PATHS="on" if fast_paths else "off",
                   LGUEST_FAST_CLOCK="on" if fast_paths else "off")
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              input=input, env=env,
                              stdin=subprocess.DEVNULL if input is None else None)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the launcher hung: still running {timeout:g}s after `{' '.join(args)}` "
                    f"(its --timeout was {guest_timeout:g}s); output so far:\n"
                    f"{(exc.stdout or b'')[-1500:]!r}")


def record(boot: int) -> bytes:
    """What lgk writes into sectors 0-127 on its `boot`-th boot (devtest.c)."""
    out = bytearray()
    for s in range(RECORD_SECTORS):
        text = b"lgk-disk sector %05d boot %05d\n" % (s, boot)
        out += text + bytes((i * 31 + s * 7 + boot) & 0xFF for i in range(len(text), SECTOR))
    return bytes(out)


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(DISK_SIZE))
    return path


def summary(result: subprocess.CompletedProcess) -> tuple[int, int]:
    m = re.search(r"selftest: (\d+) passed, (\d+) failed", result.stdout)
    assert m, result.stdout[-3000:] + result.stderr[-2000:]
    return int(m.group(1)), int(m.group(2))


# ---- the drivers' self-tests ------------------------------------------------------
@pytest.mark.parametrize("image", [LGK, LGK_PAE], ids=["non-PAE", "PAE"])
def test_device_self_tests_pass(image, disk):
    result = launcher("--block", str(disk), "--rng", image, "diskwrite")
    passed, failed = summary(result)
    assert failed == 0 and "FAILED" not in result.stdout, result.stdout
    assert passed >= 45, result.stdout
    for check in DEVICE_CHECKS:
        assert f"selftest: {check} ok" in result.stdout, check
    assert result.returncode == 0, result.stderr
    assert 'blk: id "disk.img"' in result.stdout
    # The first boot's record is on the disk, byte for byte; the request past
    # the end neither grew the file nor wrote its last sector.
    data = disk.read_bytes()
    assert len(data) == DISK_SIZE
    assert data[:RECORD_SECTORS * SECTOR] == record(1)
    assert data[RECORD_SECTORS * SECTOR:] == bytes(DISK_SIZE - RECORD_SECTORS * SECTOR)


def test_second_boot_reads_the_first_boots_data(disk):
    first = launcher("--block", str(disk), LGK, "diskwrite")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr
    assert "blk: no record on the disk: a fresh disk" in first.stdout
    assert disk.read_bytes()[:RECORD_SECTORS * SECTOR] == record(1)
    second = launcher("--block", str(disk), LGK_PAE, "diskwrite")   # the other table format
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr
    assert "blk: found the record of boot 1" in second.stdout
    assert "selftest: blk_persist ok" in second.stdout
    assert disk.read_bytes()[:RECORD_SECTORS * SECTOR] == record(2)


def test_read_only_disk(disk):
    disk.write_bytes(record(5) + bytes(DISK_SIZE - len(record(5))))
    before = disk.read_bytes()
    result = launcher("--block", f"{disk},ro", LGK)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "blk: found the record of boot 5" in result.stdout
    assert "selftest: blk_readonly ok" in result.stdout
    assert "blk_write_read" not in result.stdout
    assert disk.read_bytes() == before


def test_default_run_leaves_every_byte_of_the_disk_as_it_was(tmp_path):
    # A user's real image, given as the README's first command suggests: the
    # default run (and the benchmark) only read it.
    disk = tmp_path / "real.img"
    disk.write_bytes(os.urandom(DISK_SIZE))
    before = disk.read_bytes()
    result = launcher("--block", str(disk), "--rng", "--mem", "64M")      # the bundled guest
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "selftest: blk_persist ok" in result.stdout
    assert "blk: read-only checks" in result.stdout
    assert "blk_write_read" not in result.stdout
    bench = launcher("--block", str(disk), LGK, "bench")
    assert bench.returncode == 0, bench.stderr
    assert re.search(r"blk_read_mbps=", bench.stdout) and "blk_write_mbps" not in bench.stdout
    assert disk.read_bytes() == before


def test_without_devices_only_the_console_is_checked():
    # Input on stdin must not be read (nor waited for) by the default run.
    result = launcher(LGK, input="nobody reads this\n")
    assert result.returncode == 0, result.stderr
    _passed, failed = summary(result)
    assert failed == 0
    assert "selftest: console_virtio ok" in result.stdout
    assert not re.search(r"selftest: (blk|rng)_", result.stdout)


def test_bench_reports_disk_throughput(disk):
    result = launcher("--block", str(disk), LGK, "bench", "diskwrite")
    assert result.returncode == 0, result.stderr
    line = re.search(r"^bench: .*$", result.stdout, re.M)
    assert line, result.stdout
    for key in ("blk_read_mbps", "blk_write_mbps"):
        m = re.search(rf"\b{key}=(\d+)\.(\d)\b", line.group(0))
        assert m, line.group(0)
        assert int(m.group(1)) + int(m.group(2)) > 0, line.group(0)


# ---- console input ------------------------------------------------------------------
def test_echo_reads_a_line_from_stdin():
    result = launcher(LGK, "echo", input="hello from the test\nand another line\n")
    assert result.returncode == 0, result.stderr
    assert "echo: hello from the test\n" in result.stdout
    assert "another line" not in result.stdout


def test_echo_at_end_of_input():
    result = launcher(LGK_PAE, "echo")                       # stdin is /dev/null
    assert result.returncode == 0, result.stderr
    assert "echo: (end of input)" in result.stdout


# ---- hostile modes -------------------------------------------------------------------
# (guest arguments, image, what the reason must mention; None: any reason)
KILLED = [
    (["hostile=hcall"], LGK, None),
    (["hostile=hcall", "seed=2"], LGK_PAE, None),
    (["hostile=hcall", "seed=3"], LGK, None),
    (["hostile=gdt"], LGK, r"GDT index 32"),
    (["hostile=gdt", "step=2"], LGK, r"vector 256"),
    (["hostile=gdt", "step=3"], LGK, r"gate type"),
    (["hostile=gdt", "step=4"], LGK, r"Switcher while restoring gs"),
    (["hostile=gdt", "step=5"], LGK_PAE, r"Switcher while returning"),
    (["hostile=gdt", "step=6"], LGK, r"unhandled trap 14"),
    (["hostile=gdt", "step=7"], LGK, r"SET_STACK"),
    (["hostile=gdt", "step=8"], LGK, r"SET_STACK"),
    *[(["hostile=pgtable", f"step={n}"], image, reason)
      for n, reason in [(0, r"beyond guest memory"), (1, r"Switcher's reserved region"),
                        (2, r"outside its memory"), (3, r"outside its memory|beyond guest memory"),
                        (4, r"0xffc00000"), (5, r"beyond guest memory")]
      for image in (LGK, LGK_PAE)],
    (["hostile=vqloop"], LGK, r"loops"),
    *[(["hostile=vqloop", f"step={n}"], LGK, r"loops|past the ring|nested indirect")
      for n in range(1, 5)],
    (["hostile=vqrange"], LGK, r"outside guest memory"),
    (["hostile=vqrange", "step=1"], LGK, r"outside guest memory"),
    (["hostile=vqrange", "step=2"], LGK_PAE, r"outside guest memory"),
    (["hostile=vqrange", "step=3"], LGK, r"avail index"),
    (["hostile=vqrange", "step=4"], LGK, r"past the ring"),
    (["hostile=vqrange", "step=5"], LGK, r"status byte"),
    (["hostile=notify"], LGK, r"NOTIFY"),
    (["hostile=notify", "step=3"], LGK_PAE, r"NOTIFY"),
    (["hostile=notify", "step=4"], LGK, r"started twice"),
    (["hostile=clock", "step=0"], LGK, r"gate for vector 32 points into the Switcher's region"),
    (["hostile=clock", "step=1"], LGK, r"0xffc05efc"),
    (["hostile=clock", "step=1"], LGK_PAE, r"0xffc05efc"),
    (["hostile=clock", "step=2"], LGK, r"is not mapped"),
    (["hostile=clock", "step=3"], LGK, r"gate for vector \d+ points into the Switcher's region"),
    (["hostile=clock", "step=4"], LGK, r"0xffc05efc"),
    (["hostile=clock", "step=4"], LGK_PAE, r"0xffc05efc"),
    (["hostile=clock", "step=5"], LGK, r"is not mapped"),
]


def case_id(args, image, _reason):
    return "-".join(a.split("=", 1)[1] for a in args) + ("-pae" if image == LGK_PAE else "")


@pytest.mark.parametrize("args,image,reason", KILLED,
                         ids=[case_id(*c) for c in KILLED])
def test_hostile_mode_is_killed_with_a_reason(args, image, reason, disk):
    start = time.monotonic()
    result = launcher("--block", str(disk), "--rng", image, *args)
    took = time.monotonic() - start
    assert result.returncode != 124, f"--timeout expired after {took:.0f}s: " + result.stderr
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("launcher: guest killed: "), result.stderr
    if reason is not None:
        assert re.search(reason, lines[0]), lines[0]
    step = next((a for a in args if a.startswith("step=")), None)
    if step is not None:
        mode = args[0].split("=", 1)[1]
        assert f"hostile: {mode} {step[5:]}:" in result.stdout, result.stdout[-2000:]


@pytest.mark.parametrize("args", [["hostile=gdt", "step=0"], ["hostile=notify", "step=0"],
                                  ["hostile=notify", "step=1"]],
                         ids=["gdt-ignored-entries", "notify-storm", "notify-reset-restart"])
def test_hostile_harmless_steps_are_survived(args, disk):
    result = launcher("--block", str(disk), "--rng", LGK, *args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    assert "survived, as it should" in result.stdout


@pytest.mark.parametrize("image", [LGK, LGK_PAE], ids=["non-PAE", "PAE"])
def test_hostile_switcher_replaced_by_hlt(image):
    # The guest's own table in place of the Switcher's, its code pages
    # `hlt`: with a user-space irqchip KVM hands the `hlt` to us, a Switcher
    # never halts there, and the guest is killed. With the LAPIC in KVM
    # (the clock in the VM) KVM keeps a ring-0 `hlt` to itself, like any
    # other takeover the guest spins in (see below): --timeout ends it.
    slow = launcher(image, "hostile=pgtable", "step=6", fast_paths=False)
    assert slow.returncode == 1 and "KVM_EXIT_HLT" in slow.stderr, slow.stderr
    fast = launcher(image, "hostile=pgtable", "step=6", guest_timeout=10, timeout=60,
                    fast_paths=True)
    assert fast.returncode == 124 and "Traceback" not in fast.stderr, fast.stderr


@pytest.mark.parametrize("image", [LGK, LGK_PAE], ids=["non-PAE", "PAE"])
def test_hostile_switcher_takeover_does_not_hang_the_launcher(image):
    # The guest replaces the Switcher's mapping and spins at ring 0 with
    # interrupts off: no kick can ever be injected, so --timeout must end
    # the run through the shim's stop(), which needs nothing from the guest.
    start = time.monotonic()
    result = launcher(image, "hostile=pgtable", "step=7", guest_timeout=10, timeout=60)
    took = time.monotonic() - start
    assert took < 40, f"took {took:.0f}s"
    assert result.returncode == 124, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
