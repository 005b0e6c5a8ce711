"""Boot loading (docs/abi.md §1) on synthetic images, without KVM."""
import struct

import pytest

from launcher import bootparams as B
from launcher.errors import UserError
from launcher.generations import G1, G1_EARLY, G2, G3, for_version
from launcher.memory import GuestMemory

MEM = 32 << 20


def bzimage(version=0x020B, setup_sects=2, payload=b"\x90" * 5000, kver="3.14.40 (test)",
            xloadflags=0, init_size=0x10000, pref=0x1000000):
    img = bytearray((setup_sects + 1) * 512)
    img[B.ZP_SETUP_SECTS] = setup_sects
    img[0x1FE:0x200] = b"\x55\xAA"
    img[0x201] = 0x60                    # header length - 2 past 0x202
    img[B.ZP_HEADER:B.ZP_HEADER + 4] = b"HdrS"
    struct.pack_into("<H", img, B.ZP_VERSION, version)
    struct.pack_into("<I", img, B.ZP_CODE32_START, 0x100000)
    struct.pack_into("<I", img, B.ZP_CMDLINE_SIZE, 2047)
    struct.pack_into("<H", img, B.ZP_XLOADFLAGS, xloadflags)
    struct.pack_into("<Q", img, B.ZP_PREF_ADDRESS, pref)
    struct.pack_into("<I", img, B.ZP_INIT_SIZE, init_size)
    at = 0x400
    img[at:at + len(kver) + 1] = kver.encode() + b"\0"
    struct.pack_into("<H", img, B.ZP_KERNEL_VERSION, at - 0x200)
    return bytes(img) + payload


def load(tmp_path, data, mem=MEM, **kw):
    path = tmp_path / "kernel"
    path.write_bytes(data)
    memory = GuestMemory(bytearray(mem + 4096))
    return B.load_kernel(memory, str(path), mem, **kw), memory


def test_bzimage_zero_page_follows_lguest(tmp_path):
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"R" * 5000)
    info, m = load(tmp_path, bzimage(), cmdline="console=hvc0 root=/dev/vda",
                   initrd=str(initrd))
    assert info.entry == 0x100000 and info.generation.data is G2 and info.version.startswith("3.14.40")
    assert m.read(0x100000, 4) == b"\x90" * 4
    assert m.u8(B.ZP_E820_ENTRIES) == 1
    assert struct.unpack_from("<QQI", m.read(B.ZP_E820_MAP, 20)) == (0, MEM, 1)
    assert m.u32(B.ZP_HARDWARE_SUBARCH) == 1
    assert m.u8(B.ZP_LOADFLAGS) & B.KEEP_SEGMENTS
    assert m.u32(B.ZP_CMD_LINE_PTR) == 0x1000
    assert m.cstring(0x1000, 100) == b"console=hvc0 root=/dev/vda"
    assert m.u32(B.ZP_KERNEL_ALIGNMENT) == 0x1000000
    assert m.u16(B.ZP_VERSION) == 0x020B          # the kernel's own header kept
    assert m.u8(B.ZP_TYPE_OF_LOADER) == 0xFF
    assert m.u32(B.ZP_RAMDISK_SIZE) == 8192       # page-aligned
    assert m.u32(B.ZP_RAMDISK_IMAGE) == MEM - 8192
    assert m.read(MEM - 8192, 5) == b"RRRRR"
    assert m.u8(B.ZP_SENTINEL) == 0


@pytest.mark.parametrize("kver,layout", [("2.6.25", G1_EARLY), ("2.6.30.10", G1_EARLY),
                                         ("2.6.32.63", G1), ("2.6.39.3", G1),
                                         ("3.10.99", G2), ("4.0.9", G2), ("4.1.52", G3),
                                         ("4.9.229", G3), ("", G2)])
def test_generation_from_the_version_string(kver, layout):
    assert for_version(kver).data is layout


@pytest.mark.parametrize("kver,match", [("5.10.0", "removed in 4.14"),
                                        ("2.6.22.19", "predates lguest"),
                                        ("2.6.18", "predates lguest")])
def test_kernels_without_a_usable_lguest_are_refused(kver, match):
    with pytest.raises(UserError, match=match):
        for_version(kver)


def g0_kernel(page_offset=0xC0000000, pad=0x3000, signature=b"GenuineLguest", esp=None):
    """A stand-in for Linux 2.6.23's unpacked kernel: the lguest signature
    and its entry code (mov $stack,%esp; mov %esi,%eax; add $PAGE_OFFSET,%eax;
    jmp) somewhere inside."""
    esp = page_offset + 0x100000 + 0x2000 if esp is None else esp
    code = (b"\xbc" + struct.pack("<I", esp) + b"\x89\xf0\x05" + struct.pack("<I", page_offset)
            + b"\xe9\0\0\0\0")
    return b"K" * pad + signature + code + b"T" * 0x1000


def g0_bzimage(kernel, junk=b"\x1f\x8b\x08 not gzip at all"):
    import gzip
    return bzimage(version=0x0206, kver="2.6.23 (test)", payload=b"\x90" * 700 + junk
                   + gzip.compress(kernel) + b"\0" * 16)


def test_linux_2_6_23_is_unpacked_and_entered_after_its_signature(tmp_path):
    kernel = g0_kernel()
    info, m = load(tmp_path, g0_bzimage(kernel), cmdline="console=hvc0")
    assert info.generation.name == "G0" and info.page_offset == 0xC0000000
    assert m.read(0x100000, len(kernel)) == kernel           # unpacked at 1 MiB
    at = kernel.index(b"GenuineLguest") + len(b"GenuineLguest")
    assert info.entry == 0xC0000000 + 0x100000 + at           # its virtual address
    assert m.read(info.entry - 0xC0000000, 1) == b"\xbc"
    assert m.cstring(0x1000, 100) == b"console=hvc0"         # the zero page as for the rest
    assert struct.unpack_from("<QQI", m.read(B.ZP_E820_MAP, 20)) == (0, MEM, 1)


def test_a_2_6_23_kernel_with_another_page_offset(tmp_path):
    info, _ = load(tmp_path, g0_bzimage(g0_kernel(page_offset=0x80000000)))
    assert info.page_offset == 0x80000000


@pytest.mark.parametrize("kernel,match", [
    (g0_kernel(signature=b"NotAnLguestOS"), "without lguest guest support"),
    (g0_kernel(page_offset=0xC0100000), "entry code"),               # not 4 MiB aligned
    (g0_kernel(esp=0x1000), "entry code"),                            # stack outside the image
])
def test_2_6_23_kernels_that_cannot_be_entered_are_refused(tmp_path, kernel, match):
    with pytest.raises(UserError, match=match):
        load(tmp_path, g0_bzimage(kernel))


def test_a_2_6_23_bzimage_without_a_kernel_inside(tmp_path):
    with pytest.raises(UserError, match="no gzip'd kernel"):
        load(tmp_path, bzimage(version=0x0206, kver="2.6.23 (test)"))


def test_a_2_6_23_kernel_that_unpacks_beyond_memory(tmp_path):
    with pytest.raises(UserError, match="--mem"):
        load(tmp_path, g0_bzimage(g0_kernel(pad=6 << 20)), mem=6 << 20)


@pytest.mark.parametrize("data,match", [
    (b"", "empty"),
    (b"\x7fELF" + bytes(20), "not a valid ELF"),
    (b"MZ" + bytes(1000), "neither a bzImage"),
    (bzimage(version=0x0206), "2.07 or later"),
    (bzimage(xloadflags=1, version=0x020C), "64-bit"),
    (bzimage()[:600], "truncated"),
    (bzimage(init_size=64 << 20), "give the guest more"),
])
def test_bad_images_are_user_errors(tmp_path, data, match):
    with pytest.raises(UserError, match=match):
        load(tmp_path, data)


def test_syssize_rounded_up_to_16_bytes_is_not_truncation(tmp_path):
    def with_syssize(payload: bytes, paragraphs: int) -> bytes:
        img = bytearray(bzimage(payload=payload))
        struct.pack_into("<I", img, B.ZP_SYSSIZE, paragraphs)
        return bytes(img)
    payload = b"\x90" * 4993                 # 313 paragraphs, the last one 1 byte
    load(tmp_path, with_syssize(payload, 313))
    with pytest.raises(UserError, match="truncated: its header promises"):
        load(tmp_path, with_syssize(payload, 314))


def test_setup_sects_zero_means_four(tmp_path):
    img = bytearray(bzimage(setup_sects=4))
    img[B.ZP_SETUP_SECTS] = 0
    info, m = load(tmp_path, bytes(img))
    assert m.read(0x100000, 2) == b"\x90\x90"


def test_initrd_too_big_and_command_line_too_long(tmp_path):
    big = tmp_path / "big"
    big.write_bytes(bytes(MEM))
    with pytest.raises(UserError, match="initrd"):
        load(tmp_path, bzimage(), initrd=str(big))
    with pytest.raises(UserError, match="command line"):
        load(tmp_path, bzimage(), cmdline="x" * 3000)


def _linux_like_elf(tmp_path, with_lguest: bool) -> str:
    """A tiny i386 ELF that says 'Linux version' and has a symbol table."""
    import subprocess
    src = tmp_path / "k.S"
    src.write_text(".globl _start\n_start: jmp _start\n"
                   + (".globl lguest_entry\nlguest_entry: ret\n" if with_lguest else "")
                   + ".ascii \"Linux version 3.14.40 (test)\\0\"\n")
    out = tmp_path / ("vmlinux-lg" if with_lguest else "vmlinux-plain")
    subprocess.run(["gcc", "-m32", "-nostdlib", "-static", "-Wl,-N", "-Wl,-Ttext=0x100000",
                    "-Wl,--build-id=none", "-o", str(out), str(src)], check=True)
    return str(out)


def test_a_vmlinux_without_lguest_support_is_refused(tmp_path):
    path = _linux_like_elf(tmp_path, with_lguest=False)
    with pytest.raises(UserError, match="without lguest guest support"):
        B.load_kernel(GuestMemory(bytearray(MEM)), path, MEM)
    ok = _linux_like_elf(tmp_path, with_lguest=True)
    info = B.load_kernel(GuestMemory(bytearray(MEM)), ok, MEM)
    assert info.generation.data is G2 and info.version.startswith("3.14.40")
