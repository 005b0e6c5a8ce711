"""The user's terminal while a guest owns the console (docs/abi.md §11.2).

When stdin is a terminal, ISIG, ICANON and ECHO are cleared so every key,
^C included, goes to the guest; the settings come back on every way out.
"""
from __future__ import annotations

import os
import sys
import termios
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def guest_owns_terminal(fd: int | None) -> Iterator[None]:
    if fd is None or not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    raw = termios.tcgetattr(fd)
    raw[3] &= ~(termios.ISIG | termios.ICANON | termios.ECHO)
    raw[6][termios.VMIN], raw[6][termios.VTIME] = 1, 0
    try:
        termios.tcsetattr(fd, termios.TCSADRAIN, raw)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def stdin_fd() -> int | None:
    """stdin's descriptor, or None when there is no usable stdin."""
    try:
        fd = sys.stdin.fileno()
        os.fstat(fd)
        return fd
    except (AttributeError, ValueError, OSError):
        return None
