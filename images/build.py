#!/usr/bin/env python3
"""Build lgk, the project's own lguest guest kernel.

    python3 images/build.py OUTDIR

writes four images into OUTDIR:

    lgk.elf            vmlinux-style ELF (ET_EXEC, EM_386): PT_LOAD p_paddr is
                       the physical load address, e_entry the physical entry
    lgk-pae.elf        the same kernel with PAE page tables
    lgk.bzImage        a bzImage: boot sector and setup header (boot protocol
    lgk-pae.bzImage    2.10), then the uncompressed kernel that goes at 1 MiB

Needs only gcc with -m32 and GNU ld (binutils); the rest is this file, with
the Python standard library. The same sources and tools give the same bytes:
nothing depends on the time, the user or the paths.
"""
from __future__ import annotations

import os
import shlex
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "lgk")

# In reading order (README.md walks through them the same way). user.c must
# stay the file named user.c: lgk.ld links it at USER_CODE.
SOURCES = [
    "boot/head.S", "main.c", "lguest.c", "console.c", "lib.c", "segments.c",
    "traps.c", "entry.S", "mm.c", "timer.c", "sched.c", "virtio.c", "vconsole.c",
    "vblock.c", "vrng.c", "selftest.c", "devtest.c", "bench.c", "hostile.c", "user.c",
]
SETUP = "boot/setup.S"

CFLAGS = [
    "-m32", "-march=i686", "-std=gnu11", "-O2",
    "-ffreestanding", "-nostdinc", "-fno-builtin", "-fno-pic", "-fno-pie",
    "-fno-stack-protector", "-fno-common", "-fno-asynchronous-unwind-tables",
    "-fno-tree-loop-distribute-patterns", "-fcf-protection=none",
    "-mgeneral-regs-only",       # the kernel's C never touches FPU/SSE registers
    "-Wall", "-Wextra", "-Wno-unused-parameter",
]
LDFLAGS = ["-m", "elf_i386", "-nostdlib", "--build-id=none", "-z", "max-page-size=4096",
           "-z", "noexecstack"]

LOAD_ADDRESS = 0x100000
SETUP_SECTS = 1              # boot/setup.S: one sector of setup after the boot sector

PT_LOAD, ET_EXEC, EM_386 = 1, 2, 3


class BuildError(Exception):
    pass


def tool(name: str, default: str) -> list[str]:
    return shlex.split(os.environ.get(name, default))


def run(cmd: list[str], cwd: str | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          env={**os.environ, "LC_ALL": "C"})
    out = proc.stdout.decode(errors="replace")
    if proc.returncode:
        raise BuildError(f"{' '.join(cmd)}\n{out}")
    if out.strip():
        sys.stderr.write(out)


def check_toolchain(cc: list[str], ld: list[str]) -> None:
    """Fail with one clear sentence if gcc cannot make i386 code."""
    probe = "int lgk_probe(int x) { return x + 1; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        obj = os.path.join(tmp, "probe.o")
        try:
            proc = subprocess.run([*cc, "-m32", "-ffreestanding", "-nostdinc", "-c", "-x", "c",
                                   "-", "-o", obj], input=probe.encode(),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError as exc:
            raise BuildError(f"cannot run {cc[0]}: {exc}. lgk needs gcc with -m32 "
                             "(Debian/Ubuntu: apt-get install gcc gcc-multilib)") from None
        if proc.returncode:
            raise BuildError(f"`{' '.join(cc)} -m32` cannot compile i386 code, which lgk "
                             "needs (Debian/Ubuntu: apt-get install gcc-multilib):\n"
                             + proc.stdout.decode(errors="replace").strip())
        try:
            proc = subprocess.run([*ld, "-m", "elf_i386", "-r", "-o", obj + ".r", obj],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        except OSError as exc:
            raise BuildError(f"cannot run {ld[0]}: {exc}. lgk needs GNU ld "
                             "(Debian/Ubuntu: apt-get install binutils)") from None
        if proc.returncode:
            raise BuildError(f"`{' '.join(ld)} -m elf_i386` does not work:\n"
                             + proc.stdout.decode(errors="replace").strip())


# ---- reading ELF32 files (just what we need) -----------------------------------
class Elf32:
    def __init__(self, path: str) -> None:
        with open(path, "rb") as f:
            self.data = f.read()
        d = self.data
        if d[:4] != b"\x7fELF" or d[4] != 1 or d[5] != 1:
            raise BuildError(f"{path}: not a little-endian ELF32 file")
        (self.type, self.machine, _ver, self.entry, phoff, shoff, _flags, _ehsize,
         phentsize, phnum, shentsize, shnum, shstrndx) = struct.unpack_from("<HHIIIIIHHHHHH", d, 16)
        self.segments = [struct.unpack_from("<IIIIIIII", d, phoff + i * phentsize)
                         for i in range(phnum)]
        self.sections = {}
        if shnum:
            raw = [struct.unpack_from("<IIIIIIIIII", d, shoff + i * shentsize)
                   for i in range(shnum)]
            strtab = raw[shstrndx]
            for sh in raw:
                start = strtab[4] + sh[0]
                name = d[start:d.index(b"\0", start)].decode()
                self.sections[name] = sh

    def loads(self) -> list[tuple[int, int, int, int]]:
        """(p_offset, p_paddr, p_filesz, p_memsz) of every PT_LOAD."""
        return [(s[1], s[3], s[4], s[5]) for s in self.segments if s[0] == PT_LOAD and s[5]]

    def section(self, name: str) -> bytes:
        sh = self.sections[name]
        return self.data[sh[4]:sh[4] + sh[5]]

    def section_size(self, name: str) -> int:
        return self.sections[name][5] if name in self.sections else 0


# ---- building -------------------------------------------------------------------
def compile_all(cc: list[str], objdir: str, defines: list[str]) -> list[str]:
    os.makedirs(objdir, exist_ok=True)
    objs = []
    for src in SOURCES:
        obj = os.path.join(objdir, os.path.basename(src).rsplit(".", 1)[0] + ".o")
        # Relative source names, run from SRC: no absolute path ends up in the image.
        run([*cc, *CFLAGS, *defines, "-c", src, "-o", obj], cwd=SRC)
        objs.append(obj)
    user = Elf32(objs[SOURCES.index("user.c")])
    for name in (".data", ".bss"):
        if user.section_size(name):
            raise BuildError(f"user.c has a {name} section: ring-3 code is mapped read-only "
                             "and must keep its data in the task's pages")
    return objs


def link_kernel(ld: list[str], objs: list[str], out: str) -> Elf32:
    run([*ld, *LDFLAGS, "-T", os.path.join(SRC, "lgk.ld"), "-o", out, *objs])
    elf = Elf32(out)
    if elf.type != ET_EXEC or elf.machine != EM_386:
        raise BuildError(f"{out}: not an i386 executable")
    if elf.entry != LOAD_ADDRESS:
        raise BuildError(f"{out}: entry {elf.entry:#x}, expected the physical {LOAD_ADDRESS:#x}")
    for _off, paddr, _filesz, _memsz in elf.loads():
        if paddr < LOAD_ADDRESS:
            raise BuildError(f"{out}: a segment loads at {paddr:#x}, below 1 MiB")
    return elf


def flat_image(elf: Elf32) -> tuple[bytes, int]:
    """The bytes a loader puts at 1 MiB, and init_size (bss included)."""
    loads = elf.loads()
    end = max(paddr + filesz for _o, paddr, filesz, _m in loads)
    mem_end = max(paddr + memsz for _o, paddr, _f, memsz in loads)
    image = bytearray(end - LOAD_ADDRESS)
    for off, paddr, filesz, _memsz in loads:
        image[paddr - LOAD_ADDRESS:paddr - LOAD_ADDRESS + filesz] = elf.data[off:off + filesz]
    image += bytes(-len(image) % 16)
    init_size = (mem_end - LOAD_ADDRESS + 0xFFF) & ~0xFFF
    return bytes(image), init_size


def build_bzimage(cc: list[str], ld: list[str], elf: Elf32, objdir: str, out: str) -> None:
    kernel, init_size = flat_image(elf)
    setup_o = os.path.join(objdir, "setup.o")
    setup_elf = os.path.join(objdir, "setup.elf")
    run([*cc, "-m32", "-nostdinc", "-c", SETUP, "-o", setup_o], cwd=SRC)
    run([*ld, "-m", "elf_i386", "-nostdlib", "--build-id=none", "-Ttext=0", "-e", "_start",
         "--defsym", f"lgk_setup_sects={SETUP_SECTS}",
         "--defsym", f"lgk_syssize={len(kernel) // 16}",
         "--defsym", f"lgk_init_size={init_size}",
         "-o", setup_elf, setup_o])
    setup = Elf32(setup_elf).section(".text")
    if len(setup) != (SETUP_SECTS + 1) * 512:
        raise BuildError(f"setup is {len(setup)} bytes, expected {(SETUP_SECTS + 1) * 512}")
    if setup[0x202:0x206] != b"HdrS" or setup[0x1FE:0x200] != b"\x55\xaa":
        raise BuildError("setup header is malformed")
    with open(out, "wb") as f:
        f.write(setup + kernel)


def build(outdir: str) -> list[str]:
    cc, ld = tool("CC", "gcc"), tool("LD", "ld")
    check_toolchain(cc, ld)
    os.makedirs(outdir, exist_ok=True)
    written = []
    with tempfile.TemporaryDirectory(prefix="lgk-obj-") as tmp:
        for variant, defines in (("lgk", []), ("lgk-pae", ["-DCONFIG_PAE"])):
            objdir = os.path.join(tmp, variant)
            objs = compile_all(cc, objdir, defines)
            elf_path = os.path.join(outdir, f"{variant}.elf")
            elf = link_kernel(ld, objs, elf_path)
            bz_path = os.path.join(outdir, f"{variant}.bzImage")
            build_bzimage(cc, ld, elf, objdir, bz_path)
            written += [elf_path, bz_path]
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python3 images/build.py OUTDIR", file=sys.stderr)
        return 2
    try:
        for path in build(argv[0]):
            print(path)
    except BuildError as exc:
        print(f"build.py: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
