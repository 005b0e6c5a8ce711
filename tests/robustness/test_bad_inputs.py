"""Bad inputs: every mistake a user can make with files, sizes and /dev/kvm
ends with exit status 2 and one sentence (one line on stderr, prefixed
`launcher:`) that names the problem, and never a traceback. All of these
are found before any VM or testbed starts, so none needs KVM.

Most run the CLI in-process. "Unreadable" needs a user the file's mode
keeps out: when the tests run as root, the effective uid is switched to
nobody around the call (root reads everything). A closed stdout or stderr
can only be had in a child process.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import pytest

from launcher import cli, kvm
from support import LGK, launcher_argv, launcher_env

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from test_bootparams import bzimage  # noqa: E402

NOBODY = 65534
REAL_KVM_READY = cli.kvm_ready


@pytest.fixture(autouse=True)
def no_vm(monkeypatch):
    """An input the launcher wrongly accepts must fail here, not boot."""
    def refuse(*args, **kwargs):
        raise AssertionError("the launcher accepted the input and went on to KVM")
    monkeypatch.setattr(cli, "kvm_ready", refuse)


def one_sentence(argv: list[str], capsys, testbed: bool = False) -> str:
    """Run the CLI; it must exit 2 with one line on stderr. That line.
    (--no-testbed unless told: an input the launcher wrongly accepts must
    not boot a testbed VM from inside this test.)"""
    status = cli.main(argv if testbed else ["--no-testbed", *argv])
    out, err = capsys.readouterr()
    assert status == cli.EXIT_USAGE, (status, err)
    assert err.startswith("launcher: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err and "Error:" not in err, err
    return err


@contextlib.contextmanager
def as_nobody():
    """Effective uid nobody while inside, when we are root; as ourselves
    otherwise (a mode of 0 keeps an ordinary user out already)."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(NOBODY)
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def open_dir():
    """A directory anyone may enter (pytest's own are root's alone), for
    files whose own mode is the test."""
    d = tempfile.mkdtemp(prefix="lguest-bad-inputs-", dir="/tmp")
    os.chmod(d, 0o755)
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(1 << 20))
    return path


# ---- kernels (the loader's own checks are in tests/test_bootparams.py) --------------
@pytest.mark.parametrize("make,words", [
    (lambda p: p.write_bytes(b""), ["empty"]),
    (lambda p: p.mkdir(), ["directory"]),
    (lambda p: p.write_bytes(bzimage()[:600]), ["truncated"]),
    (lambda p: p.write_bytes(bzimage(xloadflags=1, version=0x020C)), ["64-bit"]),
    (lambda p: p.write_bytes(b"MZ" + bytes(4000)), ["neither a bzImage nor an ELF"]),
    (lambda p: p.write_bytes(open(LGK, "rb").read()[:1500]), ["truncated"]),
    (lambda p: p.write_bytes(bzimage(init_size=64 << 20)), ["--mem", "more"]),
    (lambda p: None, ["no such file", "kernel"]),
    (lambda p: p.write_bytes(bzimage(kver="2.6.23 (test)")),
     ["no gzip'd kernel"]),
    (lambda p: p.write_bytes(bzimage(kver="5.10.0 (test)")), ["Linux 5.10", "removed in 4.14"]),
])
def test_bad_kernels(tmp_path, capsys, make, words):
    k = tmp_path / "kernel"
    make(k)
    err = one_sentence(["--mem", "16M", str(k)], capsys)
    assert str(k) in err
    for w in words:
        assert w in err, err


@pytest.mark.parametrize("args,words", [
    (["--rng"], ["Linux 2.6.23", "no driver for the rng"]),
    (["--net", "user,mac=52:54:00:12:34:56"], ["Linux 2.6.23", "drop mac="]),
    (["--pae"], ["--pae", "Linux 2.6.23 has no PAE guests"]),
])
def test_devices_linux_2_6_23_cannot_have(tmp_path, capsys, args, words):
    k = tmp_path / "kernel"
    k.write_bytes(bzimage(kver="2.6.23 (test)"))
    err = one_sentence(["--mem", "16M", *args, str(k)], capsys)
    for w in words:
        assert w in err, err


def test_unreadable_kernel(open_dir, capsys):
    k = open_dir / "bzImage"
    k.write_bytes(open(LGK, "rb").read())
    k.chmod(0)
    with as_nobody():
        err = one_sentence([str(k)], capsys)
    assert str(k) in err and "Permission denied" in err


# ---- initrds -------------------------------------------------------------------------
@pytest.mark.parametrize("make,words", [
    (lambda p: None, ["no such file", "initrd"]),
    (lambda p: p.mkdir(), ["--initrd", "is a directory, not a ramdisk"]),
    (lambda p: p.write_bytes(b""), ["--initrd", "is empty"]),
    (lambda p: p.write_bytes(bytes(20 << 20)), ["initrd", "does not fit", "more memory"]),
])
def test_bad_initrds(tmp_path, capsys, make, words):
    i = tmp_path / "initrd"
    make(i)
    err = one_sentence(["--mem", "16M", "--initrd", str(i), LGK], capsys)
    assert str(i) in err
    for w in words:
        assert w in err, err


def test_unreadable_initrd(open_dir, capsys):
    i = open_dir / "initrd"
    i.write_bytes(b"070701" + bytes(200))
    i.chmod(0)
    with as_nobody():
        err = one_sentence(["--initrd", str(i), LGK], capsys)
    assert err == f"launcher: --initrd {i}: Permission denied\n"


# ---- disks ---------------------------------------------------------------------------
@pytest.mark.parametrize("make,words", [
    (lambda p: None, ["--block", "No such file"]),
    (lambda p: p.mkdir(), ["--block", "is a directory"]),
    (lambda p: p.write_bytes(b""), ["smaller than one 512-byte sector"]),
    (lambda p: p.write_bytes(b"x" * 511), ["smaller than one 512-byte sector"]),
    (lambda p: os.mkfifo(p), ["neither a regular file nor a block device"]),
    (lambda p: os.symlink("/dev/zero", p), ["neither a regular file nor a block device"]),
])
def test_bad_disks(tmp_path, capsys, make, words):
    d = tmp_path / "disk"
    make(d)
    err = one_sentence(["--block", str(d), LGK], capsys)
    assert str(d) in err
    for w in words:
        assert w in err, err


def test_unknown_disk_option(disk, capsys):
    err = one_sentence(["--block", f"{disk},rw", LGK], capsys)
    assert "unknown option 'rw'" in err


def test_unreadable_disk_is_not_told_to_add_ro(open_dir, capsys):
    d = open_dir / "disk.img"
    d.write_bytes(bytes(4096))
    d.chmod(0)
    for spec in (str(d), f"{d},ro"):
        with as_nobody():
            err = one_sentence(["--block", spec, LGK], capsys)
        assert err == f"launcher: --block {d}: permission denied\n"


def test_read_only_disk_without_ro_says_so(open_dir, capsys):
    d = open_dir / "disk.img"
    d.write_bytes(bytes(4096))
    d.chmod(0o444)
    with as_nobody():
        err = one_sentence(["--block", str(d), LGK], capsys)
    assert err == f"launcher: --block {d} is read-only to us: add ,ro to use it read-only\n"


def test_read_only_disk_with_ro_opens(open_dir):
    """With ,ro the same file is fine: the device offers VIRTIO_BLK_F_RO
    (the guest-side behaviour is tests/test_own_guest_devices_kvm.py)."""
    from launcher.virtio.block import VIRTIO_BLK_F_RO, Block
    d = open_dir / "disk.img"
    d.write_bytes(bytes(4096))
    d.chmod(0o444)
    with as_nobody():
        blk = Block(str(d), readonly=True)
    try:
        assert blk.size == 4096 and blk.features() & (1 << VIRTIO_BLK_F_RO)
    finally:
        blk.close()


# ---- memory sizes ----------------------------------------------------------------------
@pytest.mark.parametrize("mem,words", [
    ("0", ["out of range"]), ("1K", ["out of range"]), ("3M", ["out of range"]),
    ("5G", ["out of range"]), ("99999999999999999999G", ["out of range"]),
    ("-1", ["cannot understand"]), ("-64M", ["cannot understand"]),
    ("garbage", ["cannot understand"]), ("1.5G", ["cannot understand"]),
    ("", ["cannot understand"]), ("64 M", ["cannot understand"]),
    ("4097K", ["whole number of 4 KiB pages"]),
])
def test_absurd_memory_sizes(capsys, mem, words):
    err = one_sentence([f"--mem={mem}", LGK], capsys)
    assert repr(mem) in err or f"--mem {mem}" in err, err
    for w in words:
        assert w in err, err


@pytest.mark.parametrize("timeout", ["0", "-5", "nan", "inf", "1e300"])
def test_absurd_timeouts(capsys, timeout):
    err = one_sentence(["--timeout", timeout, LGK], capsys)
    assert "--timeout must be a positive number of seconds" in err


# ---- /dev/kvm --------------------------------------------------------------------------
@pytest.fixture
def kvm_at(monkeypatch):
    """Point the launcher's KVM probe at another path."""
    real = kvm.probe

    def point(path):
        monkeypatch.setattr(kvm, "probe", lambda: real(str(path)))
        monkeypatch.setattr(cli, "kvm_ready", REAL_KVM_READY)
    return point


def test_missing_dev_kvm(tmp_path, kvm_at, capsys):
    kvm_at(tmp_path / "kvm")
    err = one_sentence([LGK], capsys)
    assert f"{tmp_path / 'kvm'} does not exist: this host has no KVM" in err


def test_missing_dev_kvm_and_no_testbed_either(tmp_path, kvm_at, monkeypatch, capsys):
    from launcher import testbed
    kvm_at(tmp_path / "kvm")
    monkeypatch.delenv("LGUEST_IN_TESTBED", raising=False)
    monkeypatch.setattr(testbed, "available", lambda: "qemu-system-x86_64 is not installed")
    err = one_sentence([LGK], capsys, testbed=True)
    assert "does not exist" in err and "the testbed cannot start: qemu" in err


def test_dev_kvm_without_access(open_dir, kvm_at, capsys):
    node = open_dir / "kvm"
    node.write_bytes(b"")
    node.chmod(0o600)
    kvm_at(node)
    with as_nobody():
        err = one_sentence([LGK], capsys)
    assert f"no permission to open {node}" in err


def test_dev_kvm_that_is_not_kvm(tmp_path, kvm_at, capsys):
    """Something at the path that opens but is no KVM (a regular file)."""
    node = tmp_path / "kvm"
    node.write_bytes(b"not a device")
    kvm_at(node)
    err = one_sentence([LGK], capsys)
    assert f"{node} is not a KVM device" in err


# ---- standard streams: only a child process can start without them ------------------
def _closing(fd):
    return lambda: os.close(fd)


def test_closed_stdout_is_refused():
    p = subprocess.run(launcher_argv(LGK), preexec_fn=_closing(1), stderr=subprocess.PIPE,
                       stdin=subprocess.DEVNULL, env=launcher_env(), timeout=60, text=True)
    assert p.returncode == cli.EXIT_USAGE, p.stderr
    assert p.stderr.startswith("launcher: standard output is closed") and \
        p.stderr.count("\n") == 1, p.stderr


def test_closed_stderr_still_exits_2_and_keeps_stdout_clean():
    p = subprocess.run(launcher_argv("--mem", "1K", LGK), preexec_fn=_closing(2),
                       stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=launcher_env(),
                       timeout=60, text=True)
    assert p.returncode == cli.EXIT_USAGE and p.stdout == ""


@pytest.mark.parametrize("args,words", [
    (["--mem", "garbage"], "cannot understand the size"),
    (["--initrd", "/nonexistent/initrd"], "no such file"),
    (["--block", "/nonexistent/disk.img"], "No such file"),
])
def test_as_a_command(args, words):
    """The same as a real process: status 2, one line, nothing on stdout."""
    p = subprocess.run(launcher_argv(*args, LGK), capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, env=launcher_env(), timeout=60)
    assert p.returncode == cli.EXIT_USAGE and p.stdout == ""
    assert p.stderr.startswith("launcher: ") and p.stderr.count("\n") == 1 and words in p.stderr


def test_a_block_device_is_sized_by_seeking(tmp_path):
    """fstat says 0 bytes for a block device; the disk must not be refused
    as "smaller than one sector" (with a guest: test_disk_inputs_kvm.py)."""
    import struct
    from launcher.virtio.block import Block
    if os.geteuid() != 0:
        pytest.skip("attaching a loop device needs root")
    from support import loop_device
    with loop_device(tmp_path) as (dev, _backing):
        blk = Block(dev)
        try:
            assert os.fstat(blk.fd).st_size == 0 and blk.size == 4 << 20
            assert struct.unpack_from("<Q", blk.config())[0] == 8192
        finally:
            blk.close()
