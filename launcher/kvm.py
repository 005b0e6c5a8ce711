"""Python's window onto KVM: the only module that imports the C shim.

Modelled on rust-vmm's kvm-ioctls: ``Kvm`` (the /dev/kvm handle), ``Vm`` (memory
slots, vCPU creation) and ``Vcpu`` (registers, CPUID, the run loop and its
kick). Every failing ioctl raises ``KvmError`` naming the ioctl and errno.
Nothing here knows about lguest; launcher/machine.py builds the lguest VM
out of these pieces.
"""
from __future__ import annotations

import errno
import mmap
import os
import threading
from dataclasses import dataclass
from typing import Iterable

from .errors import KvmUnavailable

try:
    from ._kvm import ffi, lib
except ImportError as _exc:  # pragma: no cover - only without a build
    ffi = lib = None
    _IMPORT_ERROR: ImportError | None = _exc
else:
    _IMPORT_ERROR = None

KVM_PATH = "/dev/kvm"
EXPECTED_API_VERSION = 12

# Exit reasons by name, for messages.
EXIT_NAMES = {}
if lib is not None:
    for _name in dir(lib):
        if _name.startswith("KVM_EXIT_") and _name not in ("KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT"):
            EXIT_NAMES[getattr(lib, _name)] = _name


def lib_cap(name: str) -> int:
    """A KVM_CAP_* number from the build's <linux/kvm.h>."""
    _need_lib()
    return getattr(lib, name)


class KvmError(OSError):
    """An ioctl failed: carries the ioctl's name and errno."""

    def __init__(self, what: str, err: int) -> None:
        super().__init__(err, f"{what} failed: {os.strerror(err)}")
        self.what = what


def _need_lib() -> None:
    if lib is None:
        raise KvmUnavailable(
            "the launcher's KVM extension is not built "
            f"({_IMPORT_ERROR}); rebuild it with scripts/install-deps")


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise KvmError(what, -ret)
    return ret


def _explain_open_error(path: str, err: int) -> str:
    if err == errno.ENOENT:
        return (f"{path} does not exist: this host has no KVM "
                "(load kvm_intel or kvm_amd, or run inside scripts/testbed)")
    if err in (errno.EACCES, errno.EPERM):
        return (f"no permission to open {path}: add yourself to its group "
                "(usually 'kvm') or run as root")
    return f"cannot open {path}: {os.strerror(err)}"


@dataclass
class CpuidEntry:
    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


class Kvm:
    """An open /dev/kvm."""

    def __init__(self, path: str = KVM_PATH) -> None:
        _need_lib()
        fd = lib.shim_open(path.encode())
        if fd < 0:
            raise KvmUnavailable(_explain_open_error(path, -fd))
        self.fd = fd
        version = lib.shim_ioctl_int(fd, lib.KVM_GET_API_VERSION, 0)
        if version < 0:
            os.close(fd)
            raise KvmUnavailable(f"{path} is not a KVM device (KVM_GET_API_VERSION failed: "
                                 f"{os.strerror(-version)})")
        if version != EXPECTED_API_VERSION:
            os.close(fd)
            raise KvmUnavailable(f"{path} speaks KVM API {version}, not {EXPECTED_API_VERSION}")
        self.vcpu_mmap_size = _check(
            lib.shim_ioctl_int(fd, lib.KVM_GET_VCPU_MMAP_SIZE, 0), "KVM_GET_VCPU_MMAP_SIZE")

    def check_extension(self, cap: int) -> int:
        return max(0, lib.shim_ioctl_int(self.fd, lib.KVM_CHECK_EXTENSION, cap))

    def supported_cpuid(self) -> list[CpuidEntry]:
        nent = 256
        while True:
            buf = ffi.new("char[]", ffi.sizeof("struct kvm_cpuid2")
                          + nent * ffi.sizeof("struct kvm_cpuid_entry2"))
            cpuid = ffi.cast("struct kvm_cpuid2 *", buf)
            cpuid.nent = nent
            ret = lib.shim_ioctl_ptr(self.fd, lib.KVM_GET_SUPPORTED_CPUID, cpuid)
            if ret == -errno.E2BIG:
                nent *= 2
                continue
            _check(ret, "KVM_GET_SUPPORTED_CPUID")
            return [CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
                    for e in (cpuid.entries[i] for i in range(cpuid.nent))]

    def create_vm(self) -> "Vm":
        fd = _check(lib.shim_ioctl_int(self.fd, lib.KVM_CREATE_VM, 0), "KVM_CREATE_VM")
        return Vm(self, fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class GuestRegion:
    """Host memory backing one KVM memory slot: an anonymous shared mmap."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.map = mmap.mmap(-1, size, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self.view = memoryview(self.map)
        self.address = int(ffi.cast("uintptr_t", ffi.from_buffer(self.map)))

    def close(self) -> None:
        """Give the memory back now, after the VM that used it is closed.
        The pages are freed at once (MADV_REMOVE), whoever still holds a
        view of them; the mapping itself goes now if nothing does, else when
        the last view is collected (a view left over would then read zeros,
        never touch freed memory)."""
        if self.map.closed:
            return
        try:
            self.map.madvise(mmap.MADV_REMOVE)
        except (OSError, AttributeError):     # not shared memory, or an old Python
            pass
        try:
            self.view.release()
            self.map.close()
        except BufferError:     # a view or export of it is still held
            pass


class Vm:
    """A KVM virtual machine: memory slots and vCPUs."""

    def __init__(self, kvm: Kvm, fd: int) -> None:
        self.kvm, self.fd = kvm, fd
        self.regions: dict[int, GuestRegion] = {}

    def set_memory_region(self, slot: int, gpa: int, region: GuestRegion,
                          readonly: bool = False) -> None:
        r = ffi.new("struct kvm_userspace_memory_region *")
        r.slot, r.guest_phys_addr = slot, gpa
        r.memory_size, r.userspace_addr = region.size, region.address
        r.flags = lib.KVM_MEM_READONLY if readonly else 0
        _check(lib.shim_ioctl_ptr(self.fd, lib.KVM_SET_USER_MEMORY_REGION, r),
               "KVM_SET_USER_MEMORY_REGION")
        self.regions[slot] = region

    def ioeventfd(self, addr: int, length: int, fd: int, datamatch: int | None = None,
                  deassign: bool = False) -> None:
        """KVM_IOEVENTFD: a guest write of ``length`` bytes at MMIO address
        ``addr`` (equal to ``datamatch``, if given) signals eventfd ``fd``
        inside KVM, without an exit to us."""
        e = ffi.new("struct kvm_ioeventfd *")
        e.addr, e.len, e.fd = addr, length, fd
        e.flags = lib.KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0
        if datamatch is not None:
            e.datamatch = datamatch
            e.flags |= lib.KVM_IOEVENTFD_FLAG_DATAMATCH
        _check(lib.shim_ioctl_ptr(self.fd, lib.KVM_IOEVENTFD, e), "KVM_IOEVENTFD")

    def enable_cap(self, cap_number: int, arg0: int = 0, name: str = "") -> None:
        cap = ffi.new("struct kvm_enable_cap *")
        cap.cap = cap_number
        cap.args[0] = arg0
        _check(lib.shim_ioctl_ptr(self.fd, lib.KVM_ENABLE_CAP, cap),
               f"KVM_ENABLE_CAP({name or cap_number})")

    def enable_split_irqchip(self) -> None:
        """KVM_CAP_SPLIT_IRQCHIP: a local APIC per vCPU in KVM, no PIC or
        I/O APIC (0 routes for the absent I/O APIC). Before the first vCPU."""
        self.enable_cap(lib.KVM_CAP_SPLIT_IRQCHIP, 0, "KVM_CAP_SPLIT_IRQCHIP")

    def create_vcpu(self, index: int, kick_vector: int) -> "Vcpu":
        fd = _check(lib.shim_ioctl_int(self.fd, lib.KVM_CREATE_VCPU, index), "KVM_CREATE_VCPU")
        return Vcpu(self, fd, kick_vector)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Vcpu:
    """One vCPU with its kvm_run page, run loop and kick."""

    def __init__(self, vm: Vm, fd: int, kick_vector: int) -> None:
        self.vm, self.fd = vm, fd
        self.shim = ffi.new("struct shim_vcpu *")
        _check(lib.shim_vcpu_init(self.shim, fd, vm.kvm.vcpu_mmap_size, kick_vector),
               "mmap of kvm_run")
        self.run_page = self.shim.run
        # kick() and stop() come from other threads (devices, timers, the
        # --timeout); after close() the shim's kvm_run page is gone, so they
        # must become no-ops, and close() must not race one in progress.
        self._closing = threading.Lock()
        self._closed = False
        self.io = lib.shim_run_io(self.run_page)
        self.mmio = lib.shim_run_mmio(self.run_page)
        self.kick_vector = kick_vector

    # -- the hot path ---------------------------------------------------
    # KVM_RUN itself is lib.shim_vcpu_run(self.shim), called straight from
    # Host.run's loop: it returns the KVM exit reason, SHIM_RUN_SIGNAL when a
    # signal for Python cut it short, SHIM_RUN_STOPPED after stop(), or
    # -errno.
    def mmio_access(self) -> tuple[int, int, int | None]:
        """After KVM_EXIT_MMIO: (guest-physical address, width, the value
        written, or None for a read)."""
        m = self.mmio
        width = m.len
        if not m.is_write:
            return m.phys_addr, width, None
        return m.phys_addr, width, int.from_bytes(ffi.buffer(m.data)[0:min(width, 8)], "little")

    def mmio_complete_read(self, value: int) -> None:
        """The data a read returns; KVM puts it in the register at the
        next KVM_RUN."""
        width = min(self.mmio.len, 8)
        ffi.buffer(self.mmio.data)[0:width] = value.to_bytes(width, "little")

    def kick(self) -> None:
        """From any thread: make the guest take the kick vector at its next
        instruction boundary (or at once if it is not running)."""
        with self._closing:
            if not self._closed:
                lib.shim_vcpu_kick(self.shim)

    def clear_kick(self) -> None:
        lib.shim_vcpu_clear_kick(self.shim)

    def stop(self) -> None:
        """From any thread: make run() return SHIM_RUN_STOPPED now and from
        then on, whatever the guest is doing."""
        with self._closing:
            if not self._closed:
                lib.shim_vcpu_stop(self.shim)

    # -- setup ------------------------------------------------------------
    def get_regs(self):
        regs = ffi.new("struct kvm_regs *")
        _check(lib.shim_ioctl_ptr(self.fd, lib.KVM_GET_REGS, regs), "KVM_GET_REGS")
        return regs

    def set_regs(self, regs) -> None:
        _check(lib.shim_ioctl_ptr(self.fd, lib.KVM_SET_REGS, regs), "KVM_SET_REGS")

    def get_sregs(self):
        sregs = ffi.new("struct kvm_sregs *")
        _check(lib.shim_ioctl_ptr(self.fd, lib.KVM_GET_SREGS, sregs), "KVM_GET_SREGS")
        return sregs

    def set_sregs(self, sregs) -> None:
        _check(lib.shim_ioctl_ptr(self.fd, lib.KVM_SET_SREGS, sregs), "KVM_SET_SREGS")

    def set_cpuid(self, entries: Iterable[CpuidEntry]) -> None:
        entries = list(entries)
        buf = ffi.new("char[]", ffi.sizeof("struct kvm_cpuid2")
                      + len(entries) * ffi.sizeof("struct kvm_cpuid_entry2"))
        cpuid = ffi.cast("struct kvm_cpuid2 *", buf)
        cpuid.nent = len(entries)
        for i, e in enumerate(entries):
            c = cpuid.entries[i]
            c.function, c.index, c.flags = e.function, e.index, e.flags
            c.eax, c.ebx, c.ecx, c.edx = e.eax, e.ebx, e.ecx, e.edx
        _check(lib.shim_ioctl_ptr(self.fd, lib.KVM_SET_CPUID2, cpuid), "KVM_SET_CPUID2")

    def set_msrs(self, msrs: dict[int, int]) -> None:
        buf = ffi.new("char[]", ffi.sizeof("struct kvm_msrs")
                      + len(msrs) * ffi.sizeof("struct kvm_msr_entry"))
        m = ffi.cast("struct kvm_msrs *", buf)
        m.nmsrs = len(msrs)
        for i, (index, value) in enumerate(msrs.items()):
            m.entries[i].index, m.entries[i].data = index, value
        done = _check(lib.shim_ioctl_ptr(self.fd, lib.KVM_SET_MSRS, m), "KVM_SET_MSRS")
        if done != len(msrs):
            raise KvmError("KVM_SET_MSRS", errno.EINVAL)

    def get_lapic(self) -> bytearray:
        state = ffi.new("struct kvm_lapic_state *")
        _check(lib.shim_ioctl_ptr(self.fd, lib.KVM_GET_LAPIC, state), "KVM_GET_LAPIC")
        return bytearray(ffi.buffer(state.regs))

    def set_lapic(self, regs: bytes) -> None:
        state = ffi.new("struct kvm_lapic_state *")
        ffi.buffer(state.regs)[:] = bytes(regs)
        _check(lib.shim_ioctl_ptr(self.fd, lib.KVM_SET_LAPIC, state), "KVM_SET_LAPIC")

    def kick_by_msi(self) -> None:
        """From now on a kick is an MSI to the in-kernel LAPIC."""
        self.shim.vm_fd = self.vm.fd
        self.shim.msi_kick = 1

    def tsc_khz(self) -> int:
        return max(0, lib.shim_ioctl_int(self.fd, lib.KVM_GET_TSC_KHZ, 0))

    def interrupt(self, vector: int) -> None:
        irq = ffi.new("struct kvm_interrupt *")
        irq.irq = vector
        _check(lib.shim_ioctl_ptr(self.fd, lib.KVM_INTERRUPT, irq), "KVM_INTERRUPT")

    @property
    def counters(self) -> dict[str, int]:
        s = self.shim
        return {"kicks_injected": s.kicks_injected, "window_exits": s.window_exits,
                "eintr_exits": s.eintr_exits, "msi_kicks": s.msi_kicks}

    def count_run_time(self) -> None:
        """Count the CPU time this vCPU's thread spends inside KVM_RUN,
        from the next KVM_RUN on. It costs two system calls per KVM_RUN:
        launcher-bench only."""
        self.shim.account = 1

    def run_time_ns(self) -> int:
        """That time so far (counting starts now if it had not)."""
        self.count_run_time()
        return lib.shim_vcpu_run_cpu_ns(self.shim)

    def close(self) -> None:
        with self._closing:
            if self.fd < 0:
                return
            self._closed = True
            lib.shim_vcpu_fini(self.shim)
            os.close(self.fd)
            self.fd = -1


def memory_barrier() -> None:
    """A full memory fence. x86 may let a store pass a later load; virtio's
    "re-enable notifications, then look again" handshakes need the fence,
    the guest runs on another CPU at the same time."""
    if lib is not None:
        lib.shim_memory_barrier()


@dataclass
class KvmProbe:
    usable: bool
    reason: str


CR0_PE, CR0_PG = 0x1, 0x80000000


def probe(path: str = KVM_PATH) -> KvmProbe:
    """Can this host's KVM run a 32-bit paged guest?

    Some software KVMs (PVM, for nested clouds) accept a VM but silently drop
    CR0.PG. Setting PG through KVM_SET_SREGS and reading it back tells, without
    running any guest code.
    """
    try:
        kvm = Kvm(path)
    except KvmUnavailable as exc:
        return KvmProbe(False, str(exc))
    try:
        vm = kvm.create_vm()
        try:
            # A page of memory for a (never used) page directory at 0.
            region = GuestRegion(0x10000)
            vm.set_memory_region(0, 0, region)
            vcpu = vm.create_vcpu(0, 0x20)
            try:
                sregs = vcpu.get_sregs()
                sregs.cr0 |= CR0_PE | CR0_PG
                sregs.cr3 = 0
                sregs.cs.db = 1
                sregs.cs.l = 0
                sregs.efer = 0
                vcpu.set_sregs(sregs)
                back = vcpu.get_sregs()
                if not back.cr0 & CR0_PG:
                    return KvmProbe(False, (
                        f"{path} cannot run 32-bit paged guests (it dropped CR0.PG: "
                        "a software KVM such as PVM)"))
                return KvmProbe(True, f"{path} can run 32-bit paged guests")
            finally:
                vcpu.close()
        finally:
            vm.close()
    except KvmError as exc:
        return KvmProbe(False, f"{path} failed the paging probe: {exc}")
    finally:
        kvm.close()
