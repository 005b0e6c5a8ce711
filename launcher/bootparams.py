"""The x86 boot protocol as lguest used it (docs/abi.md §1).

``load_kernel`` puts a bzImage or a vmlinux-style ELF into guest memory,
builds the zero page (``struct boot_params``) at guest-physical 0, the
command line at 0x1000 and the initrd against the top of RAM, and tells
which lguest generation the kernel is (from its version string: see
generations.py), so the Host and the bus speak its ABI.

Every check here is about the user's input: a failure is a ``UserError``
(exit status 2, one sentence).
"""
from __future__ import annotations

import re
import struct
import zlib
from dataclasses import dataclass

from .errors import UserError
from .generations import Generation, for_version
from .memory import GuestMemory

PAGE = 4096
BOOT_PARAMS = 0x0
CMDLINE = 0x1000
KERNEL_LOAD = 0x100000
# Where an unpacked kernel lies when its header does not say (before boot
# protocol 2.10): from 1 MiB, well within 64 MiB.
IMAGE_BOUND = (KERNEL_LOAD, 64 << 20)

# Zero-page offsets (Documentation/x86/zero-page and boot protocol).
ZP_E820_ENTRIES = 0x1E8
ZP_SENTINEL = 0x1EF
ZP_SETUP_SECTS = 0x1F1
ZP_SYSSIZE = 0x1F4                # protected-mode code size, 16-byte units
ZP_JUMP = 0x200
ZP_HEADER = 0x202
ZP_VERSION = 0x206
ZP_KERNEL_VERSION = 0x20E
ZP_TYPE_OF_LOADER = 0x210
ZP_LOADFLAGS = 0x211
ZP_CODE32_START = 0x214
ZP_RAMDISK_IMAGE = 0x218
ZP_RAMDISK_SIZE = 0x21C
ZP_CMD_LINE_PTR = 0x228
ZP_KERNEL_ALIGNMENT = 0x230
ZP_XLOADFLAGS = 0x236
ZP_CMDLINE_SIZE = 0x238
ZP_HARDWARE_SUBARCH = 0x23C
ZP_PREF_ADDRESS = 0x258
ZP_INIT_SIZE = 0x260
ZP_E820_MAP = 0x2D0

KEEP_SEGMENTS = 0x40
XLF_KERNEL_64 = 0x1
HARDWARE_SUBARCH_LGUEST = 1
E820_RAM = 1
MIN_PROTOCOL = 0x0207          # the first with hardware_subarch


@dataclass
class BootInfo:
    entry: int                  # guest-physical entry point (ring 1, linear mode)
    generation: Generation      # the lguest ABI it speaks
    version: str                # the kernel's version string, if found
    kernel_end: int             # first byte after what the kernel needs at boot
    initrd_at: int = 0          # where the initrd starts (the end of RAM if none)
    # Where the running kernel's image will lie once unpacked, as far as
    # the header tells (protocol 2.10 gives it exactly; else a bound): the
    # Host looks there for what it must patch or learn at INIT (G1).
    image: tuple[int, int] = IMAGE_BOUND
    # G0 (Linux 2.6.23) starts at its virtual addresses: the kernel's
    # PAGE_OFFSET, which linear mode maps RAM at too. 0 for the others.
    page_offset: int = 0


def align_up(n: int, a: int = PAGE) -> int:
    return (n + a - 1) & ~(a - 1)


def kernel_version(data: bytes) -> str:
    """A kernel image's version string: a bzImage's, or a vmlinux's "Linux
    version" banner; "" for an image with neither (the own guest's ELF)."""
    if data[:4] == b"\x7fELF":
        m = re.search(rb"Linux version (\S+)", data)
        return m.group(1).decode("ascii", "replace") if m else ""
    if len(data) > ZP_HEADER + 4 and data[ZP_HEADER:ZP_HEADER + 4] == b"HdrS":
        return _bz_version(data)
    return ""


def kernel_generation(data: bytes, path: str) -> Generation:
    """The generation of a kernel image's bytes, before loading it, from its
    version string. An image without one (the own guest's ELF) speaks G2."""
    try:
        return for_version(kernel_version(data))
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


def read_image(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except IsADirectoryError:
        raise UserError(f"{path} is a directory, not a kernel image") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    if not data:
        raise UserError(f"{path} is empty")
    return data


def load_kernel(memory: GuestMemory, path: str, mem: int, cmdline: str = "",
                initrd: str | None = None, *, data: bytes | None = None,
                initrd_data: bytes | None = None) -> BootInfo:
    """Load a kernel, zero page, command line and initrd; ``mem`` is the
    RAM the guest's e820 reports (guest memory may extend past it). The
    files are read unless their bytes are given (a launcher that rebooted
    after chroot can no longer open them)."""
    if data is None:
        data = read_image(path)
    if data[:4] == b"\x7fELF":
        info = _load_elf(memory, path, data, mem)
        header = b""
    elif len(data) > ZP_HEADER + 4 and data[ZP_HEADER:ZP_HEADER + 4] == b"HdrS":
        info, header = _load_bzimage(memory, path, data, mem)
    else:
        raise UserError(f"{path} is neither a bzImage nor an ELF kernel image")
    initrd_at, initrd_size = mem, 0
    if initrd is not None:
        blob = initrd_data if initrd_data is not None else read_image(initrd)
        initrd_size = align_up(len(blob))
        initrd_at = mem - initrd_size
        if initrd_at < info.kernel_end:
            raise UserError(f"the initrd {initrd} ({len(blob) >> 10} KiB) does not fit in "
                            f"--mem above the kernel: give the guest more memory")
        memory.write(initrd_at, blob)
    _write_zero_page(memory, header, mem, cmdline, initrd_at, initrd_size)
    info.initrd_at = initrd_at
    return info


def _load_bzimage(memory: GuestMemory, path: str, data: bytes,
                  mem: int) -> tuple[BootInfo, bytes]:
    version = struct.unpack_from("<H", data, ZP_VERSION)[0]
    version_string = _bz_version(data)
    generation = _generation(path, version_string)
    pm_offset, header = _setup_header(path, data)
    if generation.enters_after_signature:
        return _load_signature_kernel(memory, path, data[pm_offset:], mem, generation,
                                      version_string), header
    if version < MIN_PROTOCOL:
        raise UserError(f"{path} uses boot protocol {version >> 8}.{version & 0xFF}; lguest "
                        "needs 2.07 or later (Linux 2.6.24+)")
    if _is_64bit_bzimage(data, version):
        raise UserError(f"{path} is a 64-bit kernel; lguest guests are 32-bit (i386)")
    payload = data[pm_offset:]
    entry = struct.unpack_from("<I", data, ZP_CODE32_START)[0]
    end = KERNEL_LOAD + len(payload)
    image = IMAGE_BOUND
    if version >= 0x020A:
        pref = struct.unpack_from("<Q", data, ZP_PREF_ADDRESS)[0]
        init_size = struct.unpack_from("<I", data, ZP_INIT_SIZE)[0]
        end = max(end, pref + init_size)
        image = (pref, pref + init_size)
    if end > mem:
        raise UserError(f"{path} needs {end >> 20} MiB to boot (it unpacks up to "
                        f"{end:#x}); give the guest more than that with --mem")
    memory.write(KERNEL_LOAD, payload)
    return BootInfo(entry, generation, version_string, end, image=image), header


def _setup_header(path: str, data: bytes) -> tuple[int, bytes]:
    """Where the protected-mode code starts, and the setup header to copy
    into the zero page."""
    setup_sects = data[ZP_SETUP_SECTS] or 4
    pm_offset = (setup_sects + 1) * 512
    if pm_offset >= len(data):
        raise UserError(f"{path} is truncated: its setup claims {setup_sects} sectors "
                        f"but the file has {len(data)} bytes")
    # syssize counts 16-byte paragraphs, rounded up: old build tools (Linux
    # 2.6.24's, say) did not pad the file to match, so up to 15 bytes short
    # is a whole kernel.
    syssize = struct.unpack_from("<I", data, ZP_SYSSIZE)[0] * 16
    if syssize and len(data) < pm_offset + syssize - 15:
        raise UserError(f"{path} is truncated: its header promises {pm_offset + syssize} "
                        f"bytes but the file has {len(data)}")
    if data[0x1FE:0x200] != b"\x55\xAA":
        raise UserError(f"{path} has no boot-sector signature: not a valid bzImage")
    return pm_offset, data[ZP_SETUP_SECTS:ZP_HEADER + data[0x201]]


# Linux 2.6.23's lguest entry, just after the signature: mov $stack,%esp;
# mov %esi,%eax; add $PAGE_OFFSET,%eax; jmp lguest_init.
SIGNATURE = b"GenuineLguest"
G0_BSS_ROOM = 4 << 20          # the image does not say how big its bss is; keep this clear


def _load_signature_kernel(memory: GuestMemory, path: str, payload: bytes, mem: int,
                           generation: Generation, version: str) -> BootInfo:
    """Linux 2.6.23 (G0): its decompressor cannot run under lguest, so the
    Launcher unpacks the gzip'd kernel to 1 MiB itself and enters it just
    after the string "GenuineLguest", at the virtual address its entry code
    was linked for, with esi = the zero page's guest-physical address."""
    room = mem - KERNEL_LOAD
    kernel = _gunzip_kernel(path, payload, room)
    at = kernel.find(SIGNATURE)
    if at < 0:
        raise UserError(f"{path} is Linux {version.split()[0]} built without lguest guest "
                        "support (CONFIG_LGUEST_GUEST)")
    entry_code = kernel[at + len(SIGNATURE):at + len(SIGNATURE) + 12]
    page_offset = _entry_page_offset(entry_code, len(kernel))
    if page_offset is None:
        raise UserError(f"{path}: its lguest entry code is not Linux 2.6.23's "
                        "(cannot tell where it expects to run)")
    end = KERNEL_LOAD + len(kernel) + G0_BSS_ROOM
    if end > mem:
        raise UserError(f"{path} needs {-(-end >> 20)} MiB to boot; give the guest more "
                        "with --mem")
    memory.write(KERNEL_LOAD, kernel)
    entry = page_offset + KERNEL_LOAD + at + len(SIGNATURE)
    return BootInfo(entry, generation, version, end, image=(KERNEL_LOAD, end),
                    page_offset=page_offset)


def _gunzip_kernel(path: str, payload: bytes, room: int) -> bytes:
    """The kernel inside a bzImage's payload: the first gzip stream in it
    that unpacks, and fits in ``room`` bytes."""
    start = payload.find(b"\x1f\x8b\x08")
    while start >= 0:
        unpacker = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            kernel = unpacker.decompress(payload[start:], room + 1)
        except zlib.error:
            start = payload.find(b"\x1f\x8b\x08", start + 1)
            continue
        if len(kernel) > room:
            raise UserError(f"{path} unpacks to more than {room >> 20} MiB: give the guest "
                            "more memory with --mem")
        if unpacker.eof:
            return kernel
        start = payload.find(b"\x1f\x8b\x08", start + 1)
    raise UserError(f"{path}: no gzip'd kernel found in its payload")


def _entry_page_offset(code: bytes, image_size: int) -> int | None:
    """PAGE_OFFSET from the entry code's `add $PAGE_OFFSET, %eax`, checked
    against its `mov $stack, %esp`, which must point into the image as it
    lies at PAGE_OFFSET + 1 MiB."""
    if len(code) < 12 or code[0] != 0xBC or code[5:7] not in (b"\x89\xf0", b"\x8b\xc6") \
            or code[7] != 0x05:
        return None
    stack, = struct.unpack_from("<I", code, 1)
    page_offset, = struct.unpack_from("<I", code, 8)
    if page_offset % (4 << 20) or not 0 < page_offset < 0xFFC00000:
        return None
    image_at = page_offset + KERNEL_LOAD
    if not image_at < stack <= image_at + image_size + G0_BSS_ROOM:
        return None
    return page_offset


def _generation(path: str, version: str) -> Generation:
    try:
        return for_version(version)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


def _is_64bit_bzimage(data: bytes, version: int) -> bool:
    """A bzImage built for x86-64 says so in xloadflags (protocol 2.12+)."""
    if version < 0x020C or len(data) < ZP_XLOADFLAGS + 2:
        return False
    return bool(struct.unpack_from("<H", data, ZP_XLOADFLAGS)[0] & XLF_KERNEL_64)


def _bz_version(data: bytes) -> str:
    at = struct.unpack_from("<H", data, ZP_KERNEL_VERSION)[0] + 0x200
    if not 0x200 < at < len(data):
        return ""
    raw = data[at:at + 128].split(b"\0", 1)[0]
    return raw.decode("ascii", "replace")


LGUEST_SYMBOLS = ("lguest_entry", "lguest_init")


def _load_elf(memory: GuestMemory, path: str, data: bytes, mem: int) -> BootInfo:
    from .loader import load_elf_bytes
    image = load_elf_bytes(memory, path, data, limit=mem, want_symbols=True)
    m = re.search(rb"Linux version (\S+)", data)
    version = m.group(1).decode("ascii", "replace") if m else ""
    # A Linux vmlinux with a symbol table tells whether it has lguest support.
    if version and image.symbols and not any(s in image.symbols for s in LGUEST_SYMBOLS):
        raise UserError(f"{path} is Linux {version} built without lguest guest support "
                        "(CONFIG_LGUEST_GUEST)")
    return BootInfo(image.entry, _generation(path, version), version, image.end,
                    image=(KERNEL_LOAD, image.end))


def _write_zero_page(memory: GuestMemory, header: bytes, mem: int, cmdline: str,
                     initrd_at: int, initrd_size: int) -> None:
    zp = bytearray(PAGE)
    # Newer decompressors read more of their own header than lguest filled
    # in, so start from the kernel's header (docs/abi.md §1.2).
    zp[ZP_SETUP_SECTS:ZP_SETUP_SECTS + len(header)] = header
    zp[ZP_SENTINEL] = 0
    zp[ZP_E820_ENTRIES] = 1
    struct.pack_into("<QQI", zp, ZP_E820_MAP, 0, mem, E820_RAM)
    version = struct.unpack_from("<H", zp, ZP_VERSION)[0]
    struct.pack_into("<H", zp, ZP_VERSION, max(version, MIN_PROTOCOL))
    zp[ZP_LOADFLAGS] |= KEEP_SEGMENTS
    if initrd_size:
        zp[ZP_TYPE_OF_LOADER] = 0xFF
        struct.pack_into("<II", zp, ZP_RAMDISK_IMAGE, initrd_at, initrd_size)
    struct.pack_into("<I", zp, ZP_CMD_LINE_PTR, CMDLINE)
    struct.pack_into("<I", zp, ZP_KERNEL_ALIGNMENT, 0x1000000)
    struct.pack_into("<I", zp, ZP_HARDWARE_SUBARCH, HARDWARE_SUBARCH_LGUEST)
    memory.write(BOOT_PARAMS, bytes(zp))
    limit = PAGE - 1
    if version >= 0x0206 and header:
        limit = min(limit, struct.unpack_from("<I", zp, ZP_CMDLINE_SIZE)[0] or limit)
    raw = cmdline.encode()
    if len(raw) > limit:
        raise UserError(f"the guest command line is {len(raw)} bytes; this kernel takes "
                        f"at most {limit}")
    memory.write(CMDLINE, raw + b"\0")
