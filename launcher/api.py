"""Driving a guest from Python, for CI scripts and the integration tests.

    from launcher.api import Guest

    with Guest(block=["disk.img"], rng=True) as g:   # the bundled guest
        g.expect(r"selftest: \\d+ passed")
        result = g.wait(timeout=120)
    assert result.status == 0, result.reason

A ``Guest`` runs the real ``launcher`` command in a child process, so it
behaves exactly as the command does (including re-running inside the
testbed where the host's KVM cannot run lguest guests), and a guest that
wedges can always be killed. Its console is collected as it arrives:
``expect`` waits for a pattern, ``send`` types into the console, and
``wait`` returns the exit status, the launcher's one-line reason and the
whole transcript.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Sequence


@dataclass
class Result:
    status: int            # the launcher's exit status (see README, "Exit status")
    reason: str            # its last "launcher: ..." line, if any
    transcript: str        # everything the guest printed on its console
    stderr: str


class GuestTimeout(AssertionError):
    """A pattern or the end of the run did not arrive in time."""


class Guest:
    def __init__(self, kernel: str | None = None, *, mem: str = "64M", append: str = "",
                 args: Sequence[str] = (), initrd: str | None = None,
                 block: Sequence[str] = (), rng: bool = False, tunnet: Sequence[str] = (),
                 pae: bool | None = None,
                 timeout: float | None = None, extra: Sequence[str] = (),
                 wrapper: Sequence[str] = ()) -> None:
        # wrapper: a command the launcher runs under, e.g. ip netns exec NS
        argv = [*wrapper, sys.executable, "-m", "launcher", "--mem", mem]
        if append:
            argv += ["--append", append]
        if initrd:
            argv += ["--initrd", initrd]
        for b in block:
            argv += ["--block", b]
        for t in tunnet:
            argv += ["--tunnet", t]
        if rng:
            argv.append("--rng")
        if pae is not None:
            argv.append("--pae" if pae else "--no-pae")
        if timeout:
            argv += ["--timeout", str(timeout)]
        argv += list(extra)
        if kernel:
            argv += [kernel, *args]
        elif args:
            raise ValueError("guest arguments need a kernel")
        self.argv = argv
        self.proc: subprocess.Popen | None = None
        self._out = bytearray()
        self._err = bytearray()
        self._cond = threading.Condition()
        self._readers: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> "Guest":
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        for stream, buf in ((self.proc.stdout, self._out), (self.proc.stderr, self._err)):
            t = threading.Thread(target=self._pump, args=(stream, buf), daemon=True)
            t.start()
            self._readers.append(t)
        return self

    def __enter__(self) -> "Guest":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _pump(self, stream, buf: bytearray) -> None:
        while True:
            chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(4096)
            with self._cond:
                if not chunk:
                    self._cond.notify_all()
                    return
                buf += chunk
                self._cond.notify_all()

    # -- the console -------------------------------------------------------------------
    @property
    def transcript(self) -> str:
        with self._cond:
            return self._out.decode("utf-8", "replace")

    def expect(self, pattern: str, timeout: float = 60.0, since: int = 0) -> "_TextMatch":
        """Wait until the console output (from offset ``since``) matches."""
        regex = re.compile(pattern.encode() if isinstance(pattern, str) else pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = regex.search(self._out, since)
                if m:
                    return _TextMatch(m)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and
                                 not any(t.is_alive() for t in self._readers)):
                    raise GuestTimeout(f"{pattern!r} did not appear on the console; "
                                       f"last output: {self._out[-500:].decode('utf-8', 'replace')!r}")
                self._cond.wait(min(left, 0.5))

    def send(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close_input(self) -> None:
        self.proc.stdin.close()

    # -- the end ----------------------------------------------------------------------------
    def wait(self, timeout: float = 300.0) -> Result:
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise GuestTimeout(f"the guest did not finish within {timeout:g}s") from None
        for t in self._readers:
            t.join(5)
        err = self._err.decode("utf-8", "replace")
        reasons = [l for l in err.splitlines() if l.startswith("launcher: ")]
        return Result(status, reasons[-1] if reasons else "", self.transcript, err)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL: the launcher restores the terminal and
        flushes disks on SIGTERM."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class _TextMatch:
    """A match on the console bytes, read as text."""

    def __init__(self, m: re.Match) -> None:
        self._m = m

    def group(self, *i: int) -> str:
        g = self._m.group(*i)
        return g.decode("utf-8", "replace") if isinstance(g, bytes) else g

    def end(self) -> int:
        return self._m.end()
