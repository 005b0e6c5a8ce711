"""Build steps pyproject.toml cannot express: the cffi extension and the Switcher.

The cffi extension (``launcher._kvm``) comes from native/build_ffi.py. The
Switcher is assembled from native/switcher.S with ``gcc -m32`` and linked at
its fixed address into ``launcher/data/switcher.elf``; launcher/switcher.py
reads its symbols with pyelftools at run time.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
SWITCHER_SRC = os.path.join(HERE, "native", "switcher.S")
SWITCHER_LINK_ADDR = "0xFFC00000"   # must equal SW_BASE in switcher.S (checked by Python)
HELLO_SRC = os.path.join(HERE, "images", "hello", "hello.S")


def assemble_switcher(out_path: str) -> None:
    """Assemble and link switcher.S at its run address; fail loudly."""
    if not shutil.which("gcc"):
        raise SystemExit("building lguest-on-kvm needs gcc with -m32 support "
                         "(run scripts/install-deps)")
    with tempfile.TemporaryDirectory() as tmp:
        obj = os.path.join(tmp, "switcher.o")
        try:
            subprocess.run(["gcc", "-m32", "-c", SWITCHER_SRC, "-o", obj], check=True)
            subprocess.run(["ld", "-m", "elf_i386", "-Ttext=" + SWITCHER_LINK_ADDR,
                            "-e", "switcher_entries", "--build-id=none",
                            "-o", out_path, obj], check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise SystemExit(f"assembling the Switcher failed: {exc}") from exc


def build_hello(out_path: str) -> None:
    """A minimal guest: a freestanding i386 ELF loaded at 1 MiB."""
    try:
        subprocess.run(["gcc", "-m32", "-nostdlib", "-static", "-Wl,-Ttext=0x100000",
                        "-Wl,--build-id=none", "-o", out_path, HELLO_SRC], check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"building the bundled guest failed: {exc}") from exc


def build_lgk(target_dir: str) -> None:
    """The project's own guest kernel, the bundled default (images/README.md)."""
    try:
        subprocess.run([sys.executable, os.path.join(HERE, "images", "build.py"), target_dir],
                       check=True, stdout=subprocess.DEVNULL)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise SystemExit(f"building the bundled guest kernel failed: {exc}") from exc


class BuildPyWithSwitcher(build_py):
    """build_py that also produces launcher/data/: switcher.elf, the lgk
    guest kernel images, and hello.elf (launcher-bench's hypercall loop)."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            target_dir = os.path.join(HERE, "launcher", "data")
        else:
            target_dir = os.path.join(self.build_lib, "launcher", "data")
        os.makedirs(target_dir, exist_ok=True)
        assemble_switcher(os.path.join(target_dir, "switcher.elf"))
        build_hello(os.path.join(target_dir, "hello.elf"))
        build_lgk(target_dir)


setup(
    cffi_modules=["native/build_ffi.py:ffibuilder"],
    cmdclass={"build_py": BuildPyWithSwitcher},
)
