"""The testbed: run one command inside a throwaway VM that has a real KVM.

Why it exists (docs/architecture.md, "Where it runs, and the testbed"): the
machines this project is developed on have PVM, a software KVM that cannot run
32-bit paged guests. So every test that needs KVM runs inside QEMU in software
(TCG) with ``-cpu max`` -- an emulated AMD CPU with SVM and nested paging --
booting a stock Debian x86-64 kernel that loads ``kvm_amd``. Inside, /dev/kvm
is a hardware-style KVM.

No disk image is built: the host's whole filesystem is shared read-only over
virtio-9p and the command runs with it as its root, so the host's Python,
site-packages and this checkout are used as they are. A few host directories
(/tmp, the working directory, the parents of absolute paths in argv) are
shared again *writable* at the same absolute path, so files written by either
side are seen by the other.

The pieces, in the order they happen:

- ``prepare()`` (once, cached): ``apt-get download`` a linux-image package,
  unpack it, keep vmlinuz and the modules we need, and build a busybox
  initramfs whose /init is ``INIT_SCRIPT`` below.
- ``run()`` (every time): write a small job directory under /tmp (the shares
  to mount, a shell script that sets the environment and execs argv), start
  QEMU with four virtio-serial ports whose host ends are pipes to us, relay
  "out"/"err" live to our stdout/stderr and our stdin to "in", and read the
  exit status from "status".

Entry points: ``run``, ``prepare``, ``available`` and ``main`` (for
``python -m launcher.testbed``). The pytest side is tests/testbed_plugin.py.

This module uses only the standard library and imports nothing else from
``launcher``: it must work from a bare checkout
(``PYTHONPATH=<repo> python3 -m launcher.testbed``).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import select
import shlex
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from typing import BinaryIO, Iterable, Optional, Sequence

QEMU = "qemu-system-x86_64"
BUSYBOX = "/bin/busybox"
INSTALL_HINT = "run scripts/install-deps"

# Exit statuses of our own, in the style of timeout(1) and env(1).
EXIT_TIMEOUT = 124
EXIT_VM_DIED = 125

# What /init must be able to insmod. Their dependencies are added from each
# module's own modinfo (the package ships no modules.dep: depmod runs at
# install time, and we never install it).
WANTED_MODULES = (
    "kvm-amd",          # /dev/kvm (pulls kvm, irqbypass, ccp)
    "virtio_pci",       # the transport for every device below
    "virtio_console",   # virtio-serial ports: stdin/stdout/stderr/status
    "9pnet_virtio",     # 9p over virtio...
    "9p",               # ...and the filesystem (pulls netfs, fscache)
    "tun",              # tap devices for --tunnet
    "veth",             # veth pairs into test network namespaces
    "bridge",           # --tunnet bridge:BR
    "loop",             # loop devices: a real block device behind --block
    "virtio_net",       # the network card of run(net_fd=...), for --net user
)

# With run(net_fd=...), the VM's network card is joined to this bridge
# before the command starts, so a tap on it reaches whatever is at the other
# end of net_fd on the host (the launcher's passt, for --net user).
NET_BRIDGE = "lgbr0"
NET_MAC = "52:54:00:6c:67:01"    # not QEMU's default, which a guest may use

# Environment passed from the caller into the VM, besides every LGUEST_*.
PASSED_ENV = ("PATH", "HOME", "TERM", "LANG", "VIRTUAL_ENV", "PYTHONPATH", "CI")

# Bigger 9p messages mean fewer round trips through the emulated virtqueue;
# Python startup reads hundreds of files over the read-only root share.
# 512000 is the most the virtio transport takes (it says so if asked more).
MSIZE = 512000

# virtio-9p devices each take a PCI slot; the bus has 32, some are taken.
MAX_SHARES = 20

# Host paths never shared writable: the guest mounts its own /proc, /sys,
# /dev there, and "/" itself would make the whole host writable.
UNSHAREABLE = ("/proc", "/sys", "/dev")

PORTS = ("out", "err", "in", "status")

# /init of the initramfs. It runs under busybox sh as PID 1; anything it
# prints before the ports exist goes to the serial console (the log file).
# The job directory is named on the kernel command line (testbed.job=...);
# it lives under the host's /tmp, so it is readable through the root share
# before the writable shares are mounted, and at the same path after.
INIT_SCRIPT = r"""#!/bin/busybox sh
# /init of the lguest-on-KVM testbed VM; written by launcher/testbed.py.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev

bye() { sync; poweroff -f; sleep 5; }

job=
for w in $(cat /proc/cmdline); do
  case "$w" in testbed.job=*) job="${w#testbed.job=}";; esac
done

# Dependency order was worked out at prepare time.
for m in $(cat /mod/order); do
  insmod "/mod/$m.ko" || echo "testbed-init: insmod $m failed"
done

# Ports appear once the host has announced them over the control queue,
# which happens asynchronously after virtio_console binds.
n=0
while [ "$(ls /sys/class/virtio-ports 2>/dev/null | wc -l)" -lt 4 ] && [ $n -lt 100 ]; do
  sleep 0.1; n=$((n + 1))
done
for p in /sys/class/virtio-ports/*; do
  name=$(cat "$p/name")
  case "$name" in out|err|in|status) eval "port_$name=/dev/${p##*/}";; esac
done
if [ -z "$port_out" ] || [ -z "$port_err" ] || [ -z "$port_in" ] || [ -z "$port_status" ]; then
  echo "testbed-init: virtio-serial ports missing"; ls -l /sys/class/virtio-ports; bye
fi
# A port can be open only once at a time, so open each once, here, and hand
# the descriptors down to the command.
exec 3>"$port_out" 4>"$port_err" 5<"$port_in" 6>"$port_status"
say() { echo "testbed: $*" >&4; }

[ -n "$job" ] || { say "no job on the kernel command line"; bye; }
[ -c /dev/kvm ] || say "WARNING: no /dev/kvm in the testbed (kvm_amd did not load?)"

mkdir -p /host
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=__MSIZE__,cache=__ROOTCACHE__ hostroot /host \
  || { say "cannot mount the host root over 9p"; bye; }
mount --bind /proc /host/proc
mount --bind /sys /host/sys
mkdir -p /dev/pts /dev/shm
mount --bind /dev /host/dev
mount -t devpts devpts /host/dev/pts
mount -t tmpfs shm /host/dev/shm    # also the command's TMPDIR (see guest_env)
mount -t tmpfs run /host/run        # runtime state (ip netns, locks): the VM's own

# Writable shares at the same absolute path, shorter paths first.
share() {
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=__MSIZE__,cache=mmap "$1" "/host$2" \
    || say "cannot mount $2 writable"
}
. "/host$job/mounts.sh"

echo ready >&6
# The command's root is the host's: in a mount namespace of its own, /host
# is moved over / and entered, the way switch_root does it. A plain chroot
# would do for most commands, but a chrooted process may not create user
# namespaces, and passt (--net user) sandboxes itself in one.
env -i unshare -m sh -c 'cd /host && mount --move . / && exec chroot . /bin/sh "$0"' \
  "$job/run.sh" <&5 >&3 2>&4 3>&- 4>&- 5>&- 6>&-
echo "exit $?" >&6
exec 3>&- 4>&- 5<&- 6>&-
bye
"""

# The cache is rebuilt when any of this changes.
CACHE_FORMAT = 2
# cache=loose lets the guest keep the read-only root's pages and dentries,
# which matters: Python's start-up stats and reads hundreds of files. The
# host's root does not change under a short-lived VM in ways that matter to
# it. The writable shares use cache=mmap: no caching, so both sides see each
# other's writes at once, except what mmap(MAP_SHARED) needs to work at all.
ROOT_CACHE = "loose"


class TestbedError(Exception):
    """A problem the user can fix (missing package, unprepared cache, ...)."""

    __test__ = False  # not a pytest test class, despite the name


# ----------------------------------------------------------------- the cache

def cache_dir() -> str:
    """$LGUEST_TESTBED_CACHE, or lguest-testbed under the XDG cache dir."""
    explicit = os.environ.get("LGUEST_TESTBED_CACHE")
    if explicit:
        return os.path.abspath(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "lguest-testbed")


class CachePaths:
    """The files prepare() keeps under cache_dir()."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.vmlinuz = os.path.join(root, "vmlinuz")        # the package's bzImage
        self.vmlinux = os.path.join(root, "vmlinux")        # the ELF inside it
        self.modules = os.path.join(root, "modules")        # <name>.ko, uncompressed
        self.kernel_stamp = os.path.join(root, "kernel.json")
        self.initrd = os.path.join(root, "initrd.gz")
        self.initrd_stamp = os.path.join(root, "initrd.stamp")
        self.console_log = os.path.join(root, "console.log")  # the last run's ttyS0


def _paths() -> CachePaths:
    return CachePaths(cache_dir())


def _initrd_fingerprint(kernel_release: str) -> str:
    """Changes whenever the initramfs would come out different."""
    h = hashlib.sha256()
    for part in (str(CACHE_FORMAT), kernel_release, _init_text(), _file_id(BUSYBOX),
                 " ".join(WANTED_MODULES)):
        h.update(part.encode() + b"\0")
    return h.hexdigest()


def _init_text() -> str:
    return (INIT_SCRIPT.replace("__MSIZE__", str(MSIZE))
            .replace("__ROOTCACHE__", ROOT_CACHE))


def _file_id(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{int(st.st_mtime)}"


def _read_json(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _kernel_cached(p: CachePaths) -> Optional[dict]:
    """The cached kernel's stamp if vmlinuz and every module are present."""
    stamp = _read_json(p.kernel_stamp)
    if not stamp or stamp.get("format") != CACHE_FORMAT:
        return None
    if stamp.get("wanted") != list(WANTED_MODULES):
        return None                 # the module list changed: harvest again
    files = [_boot_kernel(p, stamp)] + [os.path.join(p.modules, m + ".ko") for m in stamp["order"]]
    return stamp if all(os.path.exists(f) for f in files) else None


def _initrd_current(p: CachePaths, stamp: dict) -> bool:
    try:
        with open(p.initrd_stamp) as f:
            recorded = f.read().strip()
    except OSError:
        return False
    return os.path.exists(p.initrd) and recorded == _initrd_fingerprint(stamp["release"])


def available() -> Optional[str]:
    """None if run() can work now, else one sentence saying what is missing."""
    if shutil.which(QEMU) is None:
        return f"{QEMU} is not installed: {INSTALL_HINT}"
    p = _paths()
    stamp = _kernel_cached(p)
    if stamp is None:
        if _read_json(p.kernel_stamp):   # a cache an older launcher made
            return f"the testbed in {p.root} is out of date (it needs other modules): {INSTALL_HINT}"
        return f"testbed not prepared (no kernel in {p.root}): {INSTALL_HINT}"
    # A stale initramfs is rebuilt by run() without the network, but only if
    # busybox is still there to put in it.
    if not _initrd_current(p, stamp) and not os.path.exists(BUSYBOX):
        return f"{BUSYBOX} is missing (package busybox-static): {INSTALL_HINT}"
    return None


# --------------------------------------------------------------- prepare()

def prepare(*, quiet: bool = False) -> None:
    """Make the cache complete: kernel + modules (downloaded once), initramfs.

    Cheap when the cache is already complete. Safe to run concurrently (a lock
    file serialises preparers).
    """
    p = _paths()
    os.makedirs(p.root, exist_ok=True)
    with _Lock(os.path.join(p.root, ".lock")):
        stamp = _kernel_cached(p)
        if stamp is None:
            _note(quiet, "testbed: downloading the kernel (once)...")
            stamp = _fetch_kernel(p)
        if not _initrd_current(p, stamp):
            _build_initrd(p, stamp)


def _note(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


class _Lock:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> "_Lock":
        import fcntl  # POSIX-only, like everything else here
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _sh(argv: Sequence[str], what: str, **kw) -> str:
    """Run a helper command; its output only matters if it fails."""
    try:
        r = subprocess.run(list(argv), capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise TestbedError(f"{argv[0]} not found ({what}): {INSTALL_HINT}") from None
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise TestbedError(f"{what} failed: {' / '.join(tail)}")
    return r.stdout


# The OS's own kernel, found through its meta package: Debian's
# linux-image-amd64, or Ubuntu's linux-image-generic (whose modules are split
# into linux-modules-* and linux-modules-extra-*, and compressed with zstd).
KERNEL_META_PACKAGES = ("linux-image-amd64", "linux-image-generic", "linux-image-virtual")
_KERNEL_PART = re.compile(r"^\s*\|?Depends:\s*(linux-(?:image|modules|modules-extra)-[0-9]\S*)",
                          re.M)


def kernel_parts(depends_of) -> tuple[str, list[str]]:
    """(meta package, the versioned packages that make up its kernel).

    ``depends_of(name)`` returns ``apt-cache depends`` output, or None where
    apt knows no such package. Pure, for the unit tests.
    """
    for meta in KERNEL_META_PACKAGES:
        out = depends_of(meta)
        if out is None:
            continue
        parts: list[str] = []
        queue = [out]
        while queue:                      # the image depends on its modules
            for name in _KERNEL_PART.findall(queue.pop()):
                # The cloud flavour has no 9p modules.
                if "cloud" in name or name in parts:
                    continue
                parts.append(name)
                more = depends_of(name)
                if more:
                    queue.append(more)
        if any(n.startswith("linux-image-") for n in parts):
            return meta, parts
    raise TestbedError(
        f"cannot find a kernel package ({' or '.join(KERNEL_META_PACKAGES)}; "
        "apt lists missing? run apt-get update). On another distribution, set "
        "LGUEST_TESTBED_CACHE to a directory holding vmlinuz, modules/ and kernel.json "
        "made on a Debian or Ubuntu machine")


def _apt_depends(name: str) -> Optional[str]:
    try:
        r = subprocess.run(["apt-cache", "depends", name], capture_output=True, text=True)
    except FileNotFoundError:
        raise TestbedError(f"apt-cache not found (the testbed takes its kernel from "
                           f"Debian's or Ubuntu's packages): {INSTALL_HINT}") from None
    return r.stdout if r.returncode == 0 and "Depends:" in r.stdout else None


def _fetch_kernel(p: CachePaths) -> dict:
    meta, packages = kernel_parts(_apt_depends)
    with tempfile.TemporaryDirectory(prefix="testbed-kernel-") as tmp:
        # apt's sandbox user cannot write into root's temp dirs; the download
        # works anyway but warns, so let the sandbox user in.
        os.chmod(tmp, 0o777)
        _sh(["apt-get", "download", "-q", *packages], f"apt-get download {' '.join(packages)}",
            cwd=tmp)
        debs = sorted(f for f in os.listdir(tmp) if f.endswith(".deb"))
        if not debs:
            raise TestbedError(f"apt-get download {meta}'s kernel produced no .deb")
        tree = os.path.join(tmp, "x")
        for deb in debs:                  # one tree: image and modules together
            _sh(["dpkg-deb", "-x", os.path.join(tmp, deb), tree], f"dpkg-deb -x {deb}")
        return _harvest_kernel(p, tree, " ".join(packages))


def _harvest_kernel(p: CachePaths, tree: str, package: str) -> dict:
    """Copy vmlinuz and the wanted modules (with dependencies) into the cache."""
    boot = os.path.join(tree, "boot")
    kernels = sorted(f for f in os.listdir(boot) if f.startswith("vmlinuz-"))
    if not kernels:
        raise TestbedError(f"{package} has no /boot/vmlinuz-*")
    release = kernels[-1][len("vmlinuz-"):]
    moddir = _find_moddir(tree, release)
    index = _index_modules(moddir)
    builtin = _builtin_modules(moddir)
    order = _load_order(WANTED_MODULES, index, builtin)

    staging = p.modules + ".new"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    for name in order:
        # busybox insmod reads only plain ELF, so decompress here.
        with open(os.path.join(staging, name + ".ko"), "wb") as f:
            f.write(_read_module(index[name]))
    shutil.rmtree(p.modules, ignore_errors=True)
    os.replace(staging, p.modules)
    shutil.copyfile(os.path.join(boot, kernels[-1]), p.vmlinuz + ".new")
    os.replace(p.vmlinuz + ".new", p.vmlinuz)
    with open(p.vmlinuz, "rb") as f:
        vmlinux = extract_vmlinux(f.read())
    boot_file = "vmlinuz"
    if vmlinux is not None and has_pvh_entry(vmlinux):
        _write_atomic(p.vmlinux, vmlinux)
        boot_file = "vmlinux"

    stamp = {"format": CACHE_FORMAT, "package": package, "release": release,
             "boot": boot_file, "order": order, "wanted": list(WANTED_MODULES)}
    _write_atomic(p.kernel_stamp, json.dumps(stamp, indent=1).encode())
    return stamp


def _boot_kernel(p: CachePaths, stamp: dict) -> str:
    return p.vmlinux if stamp.get("boot") == "vmlinux" else p.vmlinuz


# Booting the bzImage costs seconds under TCG: firmware, then the kernel
# decompressing itself (xz) on the emulated CPU. QEMU can instead load the
# uncompressed ELF and enter it through its PVH entry point, so at prepare
# time we decompress once, here, natively.
def extract_vmlinux(bzimage: bytes) -> Optional[bytes]:
    """The ELF inside a bzImage (xz or gzip payload), or None."""
    for magic, decompress in ((b"\xfd7zXZ\x00", _unxz), (b"\x1f\x8b\x08", _ungzip)):
        start = bzimage.find(magic)
        while start != -1:
            try:
                elf = decompress(bzimage[start:])
            except (lzma.LZMAError, OSError, EOFError, gzip.BadGzipFile):
                elf = b""
            if elf.startswith(b"\x7fELF"):
                return elf
            start = bzimage.find(magic, start + 1)
    return None


def _unxz(data: bytes) -> bytes:
    # The payload is followed by other bytes: a decompressor object stops
    # at the end of the stream instead of complaining about them.
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _ungzip(data: bytes) -> bytes:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


XEN_ELFNOTE_PHYS32_ENTRY = 18


def has_pvh_entry(elf: bytes) -> bool:
    """Does this 64-bit ELF carry the Xen note QEMU's PVH loader needs?"""
    if elf[:5] != b"\x7fELF\x02":
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        ptype, _, offset, _, _, filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if ptype != 4:  # PT_NOTE
            continue
        pos, end = offset, offset + filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and ntype == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def _find_moddir(tree: str, release: str) -> str:
    for base in ("lib/modules", "usr/lib/modules"):
        d = os.path.join(tree, base, release)
        if os.path.isdir(d):
            return d
    raise TestbedError(f"no modules directory for {release} in the kernel package")


def _module_name(filename: str) -> str:
    """kvm-amd.ko.xz -> kvm_amd: the kernel treats - and _ alike."""
    return filename.split(".ko")[0].replace("-", "_")


def _index_modules(moddir: str) -> dict[str, str]:
    index: dict[str, str] = {}
    for dirpath, _, files in os.walk(moddir):
        for f in files:
            if re.search(r"\.ko(\.xz|\.gz|\.zst)?$", f):
                index[_module_name(f)] = os.path.join(dirpath, f)
    return index


def _builtin_modules(moddir: str) -> set[str]:
    try:
        with open(os.path.join(moddir, "modules.builtin")) as f:
            return {_module_name(os.path.basename(line.strip())) for line in f if line.strip()}
    except OSError:
        return set()


def _read_module(path: str) -> bytes:
    if path.endswith(".xz"):
        return lzma.decompress(open(path, "rb").read())
    if path.endswith(".gz"):
        return gzip.decompress(open(path, "rb").read())
    if path.endswith(".zst"):             # Ubuntu's; the standard library has no zstd
        try:
            return subprocess.run(["zstd", "-dc", path], capture_output=True,
                                  check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            raise TestbedError(f"cannot decompress {os.path.basename(path)}: "
                               "install zstd") from None
    with open(path, "rb") as f:
        return f.read()


def module_depends(image: bytes) -> list[str]:
    """The depends= field of a module's .modinfo section (comma-separated)."""
    m = re.search(rb"(?:^|\x00)depends=([^\x00]*)\x00", image)
    if not m or not m.group(1):
        return []
    return [_module_name(d) for d in m.group(1).decode().split(",") if d]


def _load_order(wanted: Iterable[str], index: dict[str, str], builtin: set[str]) -> list[str]:
    """Dependencies first (depth-first post-order); built-ins need no insmod."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        name = _module_name(name)
        if name in order or name in builtin:
            return
        if name in visiting:
            raise TestbedError(f"module dependency cycle at {name}")
        if name not in index:
            raise TestbedError(f"kernel package lacks module {name} (cloud flavour?)")
        visiting.add(name)
        for dep in module_depends(_read_module(index[name])):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for w in wanted:
        visit(w)
    return order


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# ----------------------------------------------------------- the initramfs

class Cpio:
    """A newc ("070701") cpio archive, the format the kernel unpacks.

    Written here rather than with cpio(1) so the archive can hold
    /dev/console (a device node) without needing mknod.
    """

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"",
               rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        fields = (self.ino, mode, 0, 0, 1, 0, len(data), 0, 0,
                  rdev[0], rdev[1], len(encoded), 0)
        self.ino += 1
        header = b"070701" + b"".join(b"%08X" % v for v in fields)
        self.out.write(header + encoded)
        self._pad()
        self.out.write(data)
        self._pad()

    def _pad(self) -> None:
        self.out.write(b"\0" * (-self.out.tell() % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.out.getvalue()


def build_initramfs(init: str, busybox: bytes, modules: dict[str, bytes],
                    order: Sequence[str]) -> bytes:
    """The uncompressed cpio: /init, /bin/busybox, /mod/*.ko, /mod/order."""
    a = Cpio()
    for d in ("bin", "dev", "proc", "sys", "host", "mod", "tmp"):
        a.dir(d)
    a.chardev("dev/console", 5, 1)   # init's stdio before devtmpfs is mounted
    a.file("init", init.encode(), 0o755)
    a.file("bin/busybox", busybox, 0o755)
    for name in order:
        a.file(f"mod/{name}.ko", modules[name])
    a.file("mod/order", "".join(n + "\n" for n in order).encode())
    return a.finish()


def _build_initrd(p: CachePaths, stamp: dict) -> None:
    if not os.path.exists(BUSYBOX):
        raise TestbedError(f"{BUSYBOX} is missing (package busybox-static): {INSTALL_HINT}")
    with open(BUSYBOX, "rb") as f:
        busybox = f.read()
    modules = {}
    for name in stamp["order"]:
        with open(os.path.join(p.modules, name + ".ko"), "rb") as f:
            modules[name] = f.read()
    archive = build_initramfs(_init_text(), busybox, modules, stamp["order"])
    # Level 1: the kernel decompresses it on an emulated CPU at every boot,
    # and a few hundred KiB more in the cache is nothing.
    _write_atomic(p.initrd, gzip.compress(archive, compresslevel=1))
    _write_atomic(p.initrd_stamp, _initrd_fingerprint(stamp["release"]).encode())


# ------------------------------------------------------ what the VM shares

_OPT_PATH = re.compile(r"^--?[A-Za-z0-9][A-Za-z0-9_.-]*=(/.*)$", re.S)


def argv_paths(args: Iterable[str]) -> list[str]:
    """Absolute paths named in args, bare ("/a/b") or as "--opt=/a/b"."""
    found = []
    for a in args:
        if a.startswith("/"):
            found.append(a)
        else:
            m = _OPT_PATH.match(a)
            if m:
                found.append(m.group(1))
    return found


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def plan_shares(argv: Sequence[str], cwd: str, *, tmp: str = "/tmp",
                isdir=os.path.isdir, realpath=os.path.realpath) -> list[str]:
    """Host directories to mount writable inside the VM, in mount order.

    /tmp, the working directory, and the parent of every absolute path in
    argv[1:] whose parent exists (so output files that do not exist yet can
    be created). argv[0] is the program: it is executed, not written, so its
    directory stays read-only. Directories inside another share are dropped
    (already covered), as are "/" and the guest's own /proc, /sys, /dev.
    Shorter paths come first, so a mount never hides one made after it.
    """
    wanted = [tmp, cwd]
    for path in argv_paths(argv[1:]):
        path = path.split("::", 1)[0]  # pytest node ids: /a/b.py::test_x
        wanted.append(os.path.dirname(os.path.normpath(path)))
    candidates = set()
    for w in wanted:
        if not w or not isdir(w):
            continue
        r = realpath(w)
        if r == "/" or any(_under(r, u) for u in UNSHAREABLE):
            continue
        candidates.add(r)
    plan: list[str] = []
    for c in sorted(candidates, key=lambda s: (len(s), s)):
        if not any(_under(c, kept) for kept in plan):
            plan.append(c)
    return plan


def guest_env(environ: dict[str, str], extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The command's environment inside the VM (nothing else leaks in)."""
    env = {k: v for k, v in environ.items() if k in PASSED_ENV or k.startswith("LGUEST_")}
    env.update(LGUEST_IN_TESTBED="1", PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
    # Anonymous temporary files go to the guest's own tmpfs: QEMU's 9p server
    # truncates by path, so ftruncate() of an open-then-unlinked file on a
    # share fails with ENOENT -- exactly what pytest's output capture does.
    # Files under /tmp by name are still shared with the host.
    env["TMPDIR"] = "/dev/shm"
    env.update(extra or {})
    bad = [k for k in env if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
    if bad:
        raise TestbedError(f"cannot pass environment variable name(s) {bad!r}")
    return env


def run_script(argv: Sequence[str], cwd: str, env: dict[str, str], net: bool = False) -> str:
    """The /bin/sh script the VM runs in the chroot: cd, export, exec; with
    ``net``, the network card joined to NET_BRIDGE first (the host's
    iproute2 does it: busybox's ip cannot make bridges).

    Every word is shlex-quoted (POSIX single quotes), which is exact for any
    string without NUL -- and argv cannot hold NUL.
    """
    q = shlex.quote
    lines = []
    if net:
        # The VM itself must stay silent on that wire: passt takes the
        # source of the frames it receives for the guest's MAC, so one IPv6
        # or IGMP frame from the VM's own card would steer the guest's
        # traffic to it. No IPv6, no multicast, no ARP on the card or bridge.
        quiet = "multicast off arp off"
        lines.append(f"{{ sysctl -qw net.ipv6.conf.all.disable_ipv6=1 "
                     f"net.ipv6.conf.default.disable_ipv6=1 && "
                     f"ip link add name {NET_BRIDGE} type bridge && "
                     f"ip link set eth0 {quiet} master {NET_BRIDGE} && ip link set eth0 up && "
                     f"ip link set {NET_BRIDGE} {quiet} up; }} >/dev/null 2>&1 || "
                     "echo 'testbed: cannot bridge the network card (is iproute2 installed?)' >&2")
    lines.append(f"cd -- {q(cwd)} || exit 126")
    lines += [f"export {q(k + '=' + v)}" for k, v in sorted(env.items())]
    lines.append("exec " + " ".join(q(a) for a in argv))
    return "\n".join(lines) + "\n"


def mounts_script(shares: Sequence[str]) -> str:
    q = shlex.quote
    return "".join(f"share s{i} {q(path)}\n" for i, path in enumerate(shares))


# ------------------------------------------------------------------- run()

def _qemu_opt(value: str) -> str:
    """QEMU option values escape a comma by doubling it."""
    return value.replace(",", ",,")


def qemu_argv(p: CachePaths, kernel: str, *, mem_mb: int, job: str, shares: Sequence[str],
              port_chardevs: dict[str, str], console: str,
              net_fd: Optional[int] = None) -> list[str]:
    # LGUEST_TESTBED_MONITOR=PATH: QEMU's monitor on a Unix socket there
    # (`info registers` of a testbed that stopped making progress).
    monitor_path = os.environ.get("LGUEST_TESTBED_MONITOR")
    monitor = f"unix:{_qemu_opt(monitor_path)},server,nowait" if monitor_path else "none"
    argv = [
        QEMU, "-accel", "tcg", "-cpu", os.environ.get("LGUEST_TESTBED_CPU", "max"), "-m", str(mem_mb), "-smp", "1",
        "-nodefaults", "-display", "none", "-monitor", monitor, "-no-reboot",
        "-kernel", kernel, "-initrd", p.initrd,
        "-append", f"console=ttyS0 quiet loglevel=3 panic=-1 testbed.job={job}",
        "-serial", "file:" + _qemu_opt(console),
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,"
                   "readonly=on,multidevs=remap",
        "-device", "virtio-serial-pci",
    ]
    for name in PORTS:
        argv += ["-chardev", port_chardevs[name],
                 "-device", f"virtserialport,chardev={name},name={name}"]
    for i, path in enumerate(shares):
        argv += ["-virtfs", f"local,path={_qemu_opt(path)},mount_tag=s{i},"
                            "security_model=none,multidevs=remap"]
    if net_fd is not None:
        # A connected stream socket: QEMU speaks the same length-prefixed
        # frames on it that passt does.
        argv += ["-netdev", f"socket,id=net0,fd={net_fd}",
                 "-device", f"virtio-net-pci,netdev=net0,mac={NET_MAC}"]
    return argv


def _relay_out(fd: int, sink: BinaryIO) -> None:
    """Copy a port to our stream as it arrives, until QEMU closes it."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        try:
            sink.write(chunk)
            sink.flush()
        except (OSError, ValueError):
            pass  # our stdout went away; keep draining so QEMU never blocks
    os.close(fd)


def _relay_in(src: int, dst: socket.socket, stop: threading.Event) -> None:
    """Our stdin to the "in" port, then EOF.

    EOF is a half-close (shutdown SHUT_WR), not close(): a full close is a
    hang-up, on which QEMU drops whatever the guest has not read yet.
    """
    try:
        while not stop.is_set():
            ready, _, _ = select.select([src], [], [], 0.2)
            if not ready:
                continue
            chunk = os.read(src, 65536)
            if not chunk:
                break
            dst.sendall(chunk)
    except OSError:
        pass  # EPIPE once QEMU is gone, or our stdin is unusable: EOF
    finally:
        _half_close(dst)


def _half_close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _stdin_fd(stdin: object) -> Optional[int]:
    """The descriptor to relay, or None for an immediate EOF."""
    if stdin is subprocess.DEVNULL:
        return None
    fd = stdin if isinstance(stdin, int) else 0
    try:
        os.fstat(fd)
    except OSError:
        return None  # closed
    return fd


def _sink(stream: Optional[BinaryIO], fallback, fd: int) -> BinaryIO:
    """Where a port's bytes go: the given file, our stream's buffer, or our fd."""
    if stream is not None:
        return stream
    buffer = getattr(fallback, "buffer", None)
    return buffer if buffer is not None else open(fd, "wb", closefd=False)


def _tail(path: str, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    text = data.decode(errors="replace").replace("\r", "")
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def run(argv: Sequence[str], *, cwd: Optional[str] = None, timeout: Optional[float] = None,
        mem_mb: int = 2048, extra_env: Optional[dict[str, str]] = None,
        stdout: Optional[BinaryIO] = None, stderr: Optional[BinaryIO] = None,
        stdin: object = None, net_fd: Optional[int] = None) -> int:
    """Boot the testbed once, run argv inside, return its exit status.

    The command's stdout and stderr stream live to ours (or to the binary
    files given as stdout=/stderr=); our stdin (or stdin=, a descriptor, or
    subprocess.DEVNULL) is relayed to its stdin. With ``net_fd`` (a connected
    stream socket), the VM gets a network card whose frames cross it, joined
    to bridge NET_BRIDGE before the command starts. 124: timed out; 125: the VM
    died without reporting a status (the console log's tail is printed).
    Raises TestbedError if the testbed is not usable.
    """
    argv = [os.fsdecode(a) for a in argv]
    if not argv:
        raise TestbedError("no command given")
    why = available()
    if why:
        raise TestbedError(why)
    prepare(quiet=True)  # rebuilds a stale initramfs; no-op otherwise
    cwd = os.path.realpath(cwd or os.getcwd())
    out_sink = _sink(stdout, sys.stdout, 1)
    err_sink = _sink(stderr, sys.stderr, 2)
    shares = plan_shares(argv, cwd)
    if len(shares) > MAX_SHARES:
        raise TestbedError(f"too many directories to share ({len(shares)} > {MAX_SHARES})")

    p = _paths()
    _remove_stale_jobs()
    # Under /tmp on purpose (not $TMPDIR): /tmp is always shared, so the
    # guest reads the job from the same path.
    job = tempfile.mkdtemp(prefix=f"{JOB_PREFIX}{os.getpid()}-", dir="/tmp")
    console = os.path.join(p.root, f"console.{os.getpid()}.log")
    try:
        with open(os.path.join(job, "run.sh"), "w") as f:
            f.write(run_script(argv, cwd, guest_env(dict(os.environ), extra_env),
                               net=net_fd is not None))
        with open(os.path.join(job, "mounts.sh"), "w") as f:
            f.write(mounts_script(shares))
        kernel = _boot_kernel(p, _kernel_cached(p) or {})
        status, died = _boot(p, kernel, job, shares, console, mem_mb, timeout,
                             out_sink, err_sink, _stdin_fd(stdin), net_fd)
    finally:
        shutil.rmtree(job, ignore_errors=True)
        if os.path.exists(console):
            os.replace(console, p.console_log)
    if status is not None:
        return status
    err_sink.write(f"testbed: {died}; console log tail ({p.console_log}):\n".encode())
    err_sink.write((_tail(p.console_log) + "\n").encode())
    err_sink.flush()
    return EXIT_TIMEOUT if died.startswith("timed out") else EXIT_VM_DIED


JOB_PREFIX = "lguest-testbed-job-"


def _remove_stale_jobs() -> None:
    """Job directories left behind by runs that were SIGKILLed."""
    for name in os.listdir("/tmp"):
        m = re.match(re.escape(JOB_PREFIX) + r"(\d+)-", name)
        if not m:
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join("/tmp", name), ignore_errors=True)
        except OSError:
            pass  # alive, someone else's


def _boot(p: CachePaths, kernel: str, job: str, shares: Sequence[str], console: str,
          mem_mb: int, timeout: Optional[float], out_sink: BinaryIO, err_sink: BinaryIO,
          stdin_fd: Optional[int], net_fd: Optional[int] = None) -> tuple[Optional[int], str]:
    """Run QEMU to the end: (status, "") or (None, why there is no status)."""
    # Output ports: a pipe each, which QEMU opens as a file chardev by path;
    # /dev/fd/N names the write end in QEMU's own descriptor table (pass_fds).
    pipes = {name: os.pipe() for name in ("out", "err", "status")}  # (read, write)
    chardevs = {n: f"file,id={n},path=/dev/fd/{w},append=on" for n, (_, w) in pipes.items()}
    # Input: a socket. A pipe chardev would not do: QEMU opens it O_RDWR, so
    # it never sees EOF. A socket chardev turns our close into
    # CHR_EVENT_CLOSED, which the guest driver reports to read() as EOF.
    in_ours, in_qemu = socket.socketpair()
    chardevs["in"] = f"socket,id=in,fd={in_qemu.fileno()}"
    qemu_log = os.path.join(job, "qemu.log")
    argv = qemu_argv(p, kernel, mem_mb=mem_mb, job=job, shares=shares,
                     port_chardevs=chardevs, console=console, net_fd=net_fd)
    started = time.monotonic()
    try:
        with open(qemu_log, "wb") as qlog:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=qlog, stderr=qlog,
                                    pass_fds=[w for _, w in pipes.values()] + [in_qemu.fileno()]
                                    + ([net_fd] if net_fd is not None else []),
                                    preexec_fn=_die_with_parent)
    except BaseException:
        for r, _ in pipes.values():
            os.close(r)
        in_ours.close()
        raise
    finally:
        # Only QEMU may hold its ends, or nobody ever sees EOF.
        for _, w in pipes.values():
            os.close(w)
        in_qemu.close()

    status = bytearray()
    ready_at: list[float] = []
    threads = [threading.Thread(target=_relay_out, args=(pipes["out"][0], out_sink)),
               threading.Thread(target=_relay_out, args=(pipes["err"][0], err_sink)),
               threading.Thread(target=_read_status, args=(pipes["status"][0], status, ready_at))]
    stop = threading.Event()
    if stdin_fd is None:
        _half_close(in_ours)
    else:
        # Not joined: it may sit in select() on our stdin; it notices stop.
        threading.Thread(target=_relay_in, args=(stdin_fd, in_ours, stop), daemon=True).start()
    try:
        for t in threads:
            t.daemon = True
            t.start()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None, f"timed out after {timeout:g} s, QEMU killed"
    finally:
        stop.set()
        if proc.poll() is None:   # timeout, KeyboardInterrupt, any error
            proc.kill()
            proc.wait()
        for t in threads:         # QEMU is gone: the pipes hit EOF promptly
            t.join(timeout=10)
        in_ours.close()

    if ready_at and os.environ.get("LGUEST_TESTBED_VERBOSE"):
        err_sink.write(f"testbed: command started {ready_at[0] - started:.1f} s after QEMU, "
                       f"VM ran {time.monotonic() - started:.1f} s\n".encode())
        err_sink.flush()
    m = re.search(rb"^exit (\d+)$", bytes(status), re.M)
    if m:
        return int(m.group(1)), ""
    why = f"the VM stopped without reporting a status (QEMU exit {proc.returncode})"
    qemu_said = _tail(qemu_log, 5)
    if qemu_said:
        why += f"; QEMU said: {qemu_said}"
    return None, why


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL QEMU if we die without cleaning up.

    (Linux ties this to the forking *thread*; run() waits in that thread.)
    """
    try:
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, 9, 0, 0, 0)
    except Exception:
        pass  # best effort: the finally clauses in run() are the main defence


def _read_status(fd: int, buf: bytearray, ready_at: list[float]) -> None:
    """Collect the status port: "ready" when the command starts, "exit N"."""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        buf += chunk
        if not ready_at and b"ready\n" in buf:
            ready_at.append(time.monotonic())
    os.close(fd)


# ------------------------------------------------------------------ main()

def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(args: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m launcher.testbed",
        description="Run a command inside the KVM testbed VM (see launcher/testbed.py).")
    ap.add_argument("--timeout", type=float, metavar="S", help="kill the VM after S seconds")
    ap.add_argument("--mem", type=int, default=2048, metavar="MB", help="VM memory (2048)")
    ap.add_argument("--prepare", action="store_true",
                    help="download the kernel and build the initramfs (cached)")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    ns = ap.parse_args(args)
    # SIGTERM (timeout(1), CI cancelling) should clean up like Ctrl-C does.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    cmd = list(ns.command)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    try:
        if ns.prepare:
            if shutil.which(QEMU) is None:
                raise TestbedError(f"{QEMU} is not installed: {INSTALL_HINT}")
            prepare()
        if not cmd:
            if ns.prepare:
                return 0
            raise TestbedError("no command given (usage: scripts/testbed -- CMD ARGS...)")
        return run(cmd, timeout=ns.timeout, mem_mb=ns.mem)
    except TestbedError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return EXIT_VM_DIED
    except KeyboardInterrupt:
        print("testbed: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
