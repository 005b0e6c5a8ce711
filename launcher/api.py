r"""Driving a guest from Python, for CI scripts and the integration tests.

    from launcher.api import Guest
    with Guest(args=["echo"]) as g:              # the bundled guest, echoing a line
        g.expect(r"waiting for a line")
        g.send("hello\n")
        g.expect(r"echo: hello")
        result = g.wait(timeout=120)
    assert result.status == 0, result.reason

    with Guest("bzImage", initrd="initramfs.cpio.gz", args=["console=hvc0"]) as g:
        g.expect(r"# ")                          # your Linux kernel (README, "Guest kernels")
        g.send("poweroff -f\n")
        assert g.wait().status == 0

A ``Guest`` runs the real ``launcher`` command in a child process, so it
behaves exactly as the command does (including re-running inside the
testbed where the host's KVM cannot run lguest guests), and a guest that
wedges can always be killed. Its console is collected as it arrives:
``expect`` waits for a pattern, ``send`` types into the console, and
``wait`` returns the exit status, the launcher's one-line reason and the
whole transcript.

When things go wrong, the exceptions say why in the launcher's own words:
``LauncherError`` when the launcher refused to start a guest at all (exit
status 2: a missing file, a bad option), ``GuestEnded`` when ``expect``
waited for output and the run ended first, ``GuestTimeout`` when time ran
out. Each carries ``status``, ``reason`` and ``transcript`` where known.

The launcher narrates on stderr in lines with a time, ``launcher: [1.23 s]
...`` (``--verbose``, and the note that it runs in the testbed); its
verdict is the last ``launcher: ...`` line without one, and that is
``Result.reason`` (empty after a clean power-off).
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

EXIT_USAGE = 2
_NARRATION = re.compile(r"^launcher: \[\d+(\.\d+)? s\] ")


@dataclass
class Result:
    status: int            # the launcher's exit status (see README, "Exit status")
    reason: str            # its verdict, "launcher: ..." ("" after a clean power-off)
    transcript: str        # everything the guest printed on its console
    stderr: str


def verdict(stderr: str, status: int) -> str:
    """The launcher's one-line reason in its stderr: the last "launcher: "
    line that is not narration; none for a clean power-off."""
    if status == 0:
        return ""
    lines = [line for line in stderr.splitlines()
             if line.startswith("launcher: ") and not _NARRATION.match(line)]
    return lines[-1] if lines else ""


class GuestError(Exception):
    """Something ended the run; what the launcher said about it."""

    def __init__(self, message: str, status: int | None = None, reason: str = "",
                 transcript: str = "") -> None:
        super().__init__(message)
        self.status, self.reason, self.transcript = status, reason, transcript


class LauncherError(GuestError):
    """The launcher refused to start a guest (exit status 2): its reason is
    one sentence about the command line or a file."""


class GuestEnded(GuestError, AssertionError):
    """``expect`` waited for output, and the run ended before it came."""


class GuestTimeout(AssertionError):
    """A pattern or the end of the run did not arrive in time."""


class Guest:
    def __init__(self, kernel: str | None = None, *, mem: str = "64M", append: str = "",
                 args: Sequence[str] = (), initrd: str | None = None,
                 block: Sequence[str] = (), rng: bool = False, tunnet: Sequence[str] = (),
                 net: Sequence[str] = (), pae: bool | None = None,
                 timeout: float | None = None, extra: Sequence[str] = (),
                 wrapper: Sequence[str] = ()) -> None:
        """The launcher's options by name (kernel None: the bundled guest;
        args: its command line words; net: --net specs such as "user";
        extra: any other options, as strings; wrapper: a command the launcher
        runs under, e.g. ["ip", "netns", "exec", "NS"]). Nothing runs until
        ``start`` or ``with``."""
        argv = [*wrapper, sys.executable, "-m", "launcher", "--mem", mem]
        if append:
            argv += ["--append", append]
        if initrd:
            argv += ["--initrd", initrd]
        for b in block:
            argv += ["--block", b]
        for t in tunnet:
            argv += ["--tunnet", t]
        for n in net:
            argv += ["--net", n]
        if rng:
            argv.append("--rng")
        if pae is not None:
            argv.append("--pae" if pae else "--no-pae")
        if timeout:
            argv += ["--timeout", str(timeout)]
        argv += list(extra)
        if kernel:
            argv.append(kernel)
        if args:
            argv += ["--", *args]          # with no kernel, the bundled guest's
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
                last = self._out[-500:].decode("utf-8", "replace")
                if self.proc.poll() is not None and not any(t.is_alive() for t in self._readers):
                    self._raise_ended(f"{pattern!r} did not appear before the run ended", last)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GuestTimeout(f"{pattern!r} did not appear on the console within "
                                       f"{timeout:g}s; last output: {last!r}")
                self._cond.wait(min(left, 0.5))

    def _raise_ended(self, what: str, last: str) -> None:
        status = self.proc.returncode
        reason = verdict(self._err.decode("utf-8", "replace"), status)
        self._raise_if_refused(status, reason)
        raise GuestEnded(f"{what}: exit status {status}"
                         f"{', ' + reason if reason else ''}; last output: {last!r}",
                         status, reason, self._out.decode("utf-8", "replace"))

    def send(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def close_input(self) -> None:
        self.proc.stdin.close()

    # -- the end ----------------------------------------------------------------------------
    def wait(self, timeout: float = 300.0) -> Result:
        """The end of the run. Raises LauncherError if no guest ever ran
        (exit status 2), GuestTimeout if it goes on past ``timeout``."""
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise GuestTimeout(f"the guest did not finish within {timeout:g}s") from None
        for t in self._readers:
            t.join(5)
        err = self._err.decode("utf-8", "replace")
        reason = verdict(err, status)
        self._raise_if_refused(status, reason)
        return Result(status, reason, self.transcript, err)

    def _raise_if_refused(self, status: int, reason: str) -> None:
        """Exit status 2: the launcher never started a guest."""
        if status == EXIT_USAGE:
            raise LauncherError(reason or f"the launcher exited with status {status}",
                                status, reason, self.transcript)

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
