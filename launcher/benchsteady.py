"""``launcher-bench``'s steady-state figures: what keeping a guest running
costs, with the fast paths on and off in the same run.

Exits are the currency here: their counts do not depend on the machine,
unlike times in the testbed. Each figure is a ``{"on": x, "off": y}`` pair
(``off``: LGUEST_FAST_PATHS=off's reference behaviour, every event through
the Python Host):

- ``idle_exits_per_s`` / ``idle_host_cpu_pct``: exits per second, and the
  launcher's CPU time (less the guest's own) as a share of one core, while
  a guest idles: the own
  guest (images/lgk ``idle=``) with its periodic 10 ms tick and with a
  one-shot clock, and with LGUEST_TEST_KERNELS each real kernel's shell
  waiting in ``read -t`` (from 3 s into the wait: typing the command and
  its aftermath are not idle);
- ``linux_boot_exits``: exits from the start to the first userspace line,
  per real kernel;
- ``syscall_exits``: exits per system call (``dd`` of single bytes) per
  real kernel; ``g3_syscall_exits`` the same for the 4.x (G3) ones, whose
  `int $0x80` is an interrupt gate;
- ``timer_latency_us``: the own guest's 1 ms clock-event latency (median,
  p99), clock in the VM vs in Python.
"""
from __future__ import annotations

import os
import re
import threading
import time

from .bench import initrd_for_kernel
from .run import BUNDLED_GUEST, GuestConfig, Session

IDLE_SECONDS = 10
IDLE_SETTLE = 3                    # seconds of a real kernel's idle not counted
SYSCALL_BYTES = 5000               # dd bs=1: one read and one write each


def launcher_cpu_ns() -> int:
    """This process's CPU time less the guest's own: KVM accounts the time
    a vCPU runs guest code to the thread in KVM_RUN, and what we want is
    what the launcher itself costs. From /proc/self/stat (clock ticks:
    utime, stime, guest_time), so 10 ms resolution."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return time.process_time_ns()
    # fields[0] is field 3 of proc(5): utime 14, stime 15, guest_time 43
    utime, stime, guest = int(fields[11]), int(fields[12]), int(fields[40])
    return (utime + stime - guest) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


class Marks:
    """Exits, wall time and the launcher's CPU time at named moments."""

    def __init__(self) -> None:
        self.session: Session | None = None
        self.at: dict[str, tuple[int, int, int]] = {}

    def note(self, name: str) -> None:
        host = self.session.host if self.session else None
        exits = sum(host.trap_counts.values()) + host.mmio_exits if host else 0
        self.at[name] = (exits, time.monotonic_ns(), launcher_cpu_ns())

    def between(self, begin: str, end: str) -> tuple[int, float, float]:
        """(exits, seconds, CPU seconds) from one mark to the next."""
        (e0, t0, c0), (e1, t1, c1) = self.at[begin], self.at[end]
        return e1 - e0, (t1 - t0) / 1e9, (c1 - c0) / 1e9


class OwnGuestConsole(Marks):
    """lgk's console: its "@b:idle" / "@e:idle" lines are marks (they reach
    us synchronously, on the exit that writes them)."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()

    def write(self, data: bytes) -> int:
        if data[:3] in (b"@b:", b"@e:"):
            self.note(data[:-1].decode())
        else:
            self.out += data
        return len(data)

    def flush(self) -> None:
        pass


def own_guest_idle(oneshot: bool, fast: bool, seconds: int = IDLE_SECONDS) -> dict:
    console = OwnGuestConsole()
    words = f"idle={seconds}" + (" tick=oneshot" if oneshot else "")
    config = GuestConfig(kernel=BUNDLED_GUEST, mem=64 << 20, cmdline=words, console=console,
                         timeout=300, fast_traps=fast, fast_clock=fast, ioeventfd=fast)
    session = console.session = Session(config)
    try:
        outcome = session.run()
    finally:
        session.close()
    if outcome.kind != "poweroff" or "@e:idle" not in console.at:
        raise RuntimeError(f"the own guest's idle run did not finish: {outcome.message}")
    exits, seconds_, cpu = console.between("@b:idle", "@e:idle")
    return {"exits_per_s": exits / seconds_, "cpu_pct": max(0.0, 100 * cpu / seconds_)}


class ShellConsole(Marks):
    """A real kernel's console driven like a user would: at its prompt, type
    each step's command; a step ends when its marker line appears (made
    with shell arithmetic, so the echo of the command never matches)."""

    def __init__(self, steps: list[tuple[str, bytes]], input_fd: int,
                 timed: dict[int, list[tuple[float, str]]] | None = None) -> None:
        super().__init__()
        self.steps, self.input_fd = steps, input_fd
        self.timed = timed or {}            # step -> marks taken that long after it starts
        self.timers: list[threading.Timer] = []
        self.tail = b""
        self.step = -1                      # -1: booting

    def write(self, data: bytes) -> int:
        self.tail = (self.tail + data)[-512:]
        if self.step == -1 and b"userspace up" in self.tail:
            self.note("userspace")
            self.step, self.tail = 0, b""
        if self.step == 0 and b"# " in self.tail:     # the prompt (ash may add ESC[6n)
            self._next()
        elif 0 < self.step <= len(self.steps) and self.steps[self.step - 1][1] in self.tail:
            self._next()
        return len(data)

    def _next(self) -> None:
        self.note(f"step{self.step}")
        self.tail = b""
        if self.step < len(self.steps):
            os.write(self.input_fd, self.steps[self.step][0].encode())
            for delay, name in self.timed.get(self.step, []):
                timer = threading.Timer(delay, self.note, (name,))
                timer.daemon = True
                timer.start()
                self.timers.append(timer)
        else:
            os.write(self.input_fd, b"poweroff -f\n")
        self.step += 1

    def flush(self) -> None:
        pass


def linux_steady(kernel: str, initrd: str, fast: bool, seconds: int = IDLE_SECONDS) -> dict:
    """Boot a real kernel, let it idle, run a system-call loop, power off.
    Idle is the shell waiting in its `read` builtin on a FIFO nobody writes
    (no fork or exec), counted from IDLE_SETTLE seconds into the wait, so
    the aftermath of typing the command (its echo, the kernel's deferred
    work) is not counted. Exits per system call are the difference of a
    long and an empty `dd`, so starting it cancels out."""
    def step(command: str, tag: str) -> tuple[str, bytes]:
        return f"{command}; echo {tag}-$((40+2))\n", f"{tag}-42".encode()
    dd = "dd if=/dev/zero of=/dev/null bs=1 count={} 2>/dev/null"
    steps = [step("mkfifo /idle.fifo; sleep 1", "warm"),
             step(f"read -t {IDLE_SETTLE + seconds + 1} x <> /idle.fifo", "idle"),
             step(dd.format(0), "dd0"), step(dd.format(SYSCALL_BYTES), "ddn")]
    timed = {1: [(IDLE_SETTLE, "idle_begin"), (IDLE_SETTLE + seconds, "idle_end")]}
    read_fd, write_fd = os.pipe()
    console = ShellConsole(steps, write_fd, timed)
    config = GuestConfig(kernel=kernel, mem=128 << 20, initrd=initrd, cmdline="console=hvc0",
                         console=console, stdin=read_fd, timeout=1800, reboot=False,
                         fast_traps=fast, fast_clock=fast, ioeventfd=fast)
    console.note("start")
    session = console.session = Session(config)
    try:
        outcome = session.run()
        generation = session.generation
    finally:
        session.close()
        os.close(read_fd)
        os.close(write_fd)
    if console.step <= len(steps):
        raise RuntimeError(f"{kernel} did not finish the steady-state steps: {outcome.message}")
    window = [console.between(f"step{i}", f"step{i + 1}") for i in range(len(steps))]
    idle_e, idle_s, idle_c = console.between("idle_begin", "idle_end")
    dd_exits = window[3][0] - window[2][0]
    return {"boot_exits": console.at["userspace"][0],
            "exits_per_s": idle_e / idle_s,
            "cpu_pct": max(0.0, 100 * idle_c / idle_s),
            "syscall_exits": max(0, dd_exits) / (2 * SYSCALL_BYTES), "g3": generation.name == "G3"}


def timer_latency(fast: bool) -> dict:
    """The own guest's bench line, for its timer latency figures only."""
    from .bench import run_own_guest
    console, outcome, _ = run_own_guest("bench", fast_traps=fast, fast_clock=fast)
    line = re.search(r"^bench: (.*)$", console.out.decode("utf-8", "replace"), re.M)
    if outcome.kind != "poweroff" or line is None:
        raise RuntimeError(f"the own guest's benchmarks did not finish: {outcome.message}")
    values = dict(kv.split("=", 1) for kv in line.group(1).split())
    return {"median": round(float(values["timer_latency_median_ns"]) / 1000, 1),
            "p99": round(float(values["timer_latency_p99_ns"]) / 1000, 1)}


def measure_steady(seconds: int = IDLE_SECONDS) -> dict:
    """Every steady-state figure, fast paths on and off."""
    both = (("on", True), ("off", False))
    idle: dict[str, dict] = {}
    cpu: dict[str, dict] = {}
    for name, oneshot in (("lgk periodic tick", False), ("lgk one-shot clock", True)):
        for key, fast in both:
            r = own_guest_idle(oneshot, fast, seconds)
            idle.setdefault(name, {})[key] = round(r["exits_per_s"], 2)
            cpu.setdefault(name, {})[key] = round(r["cpu_pct"], 2)
    result: dict = {"idle_exits_per_s": idle, "idle_host_cpu_pct": cpu,
                    "timer_latency_us": {key: timer_latency(fast) for key, fast in both}}
    kernels = [k for k in os.environ.get("LGUEST_TEST_KERNELS", "").split(":") if k]
    initrd = os.environ.get("LGUEST_TEST_INITRD")
    if kernels and initrd:
        boots: dict[str, dict] = {}
        syscalls: dict[str, dict] = {}
        g3: dict[str, dict] = {}
        for kernel in kernels:
            name = os.path.basename(kernel)
            for key, fast in both:
                r = linux_steady(kernel, initrd_for_kernel(kernel), fast, seconds)
                idle.setdefault(name, {})[key] = round(r["exits_per_s"], 2)
                cpu.setdefault(name, {})[key] = round(r["cpu_pct"], 2)
                boots.setdefault(name, {})[key] = r["boot_exits"]
                syscalls.setdefault(name, {})[key] = round(r["syscall_exits"], 3)
                if r["g3"]:
                    g3.setdefault(name, {})[key] = round(r["syscall_exits"], 3)
        result |= {"linux_boot_exits": boots, "syscall_exits": syscalls,
                   "g3_syscall_exits": g3}
    return result


def print_steady(result: dict) -> None:
    print("steady state (fast paths on / off):")
    for key, unit in (("idle_exits_per_s", "exits/s idle (target <= 1)"),
                      ("idle_host_cpu_pct", "% of a core idle (target < 1)"),
                      ("linux_boot_exits", "exits to userspace (3.x <= 3000, 4.x <= 8000)"),
                      ("syscall_exits", "exits per system call"),
                      ("g3_syscall_exits", "exits per system call, 4.x (target 0)")):
        for name, pair in result.get(key, {}).items():
            print(f"  {name:<28} {pair['on']:>10} / {pair['off']:<10} {unit}")
    lat = result.get("timer_latency_us")
    if lat:
        print(f"  {'timer latency median':<28} {lat['on']['median']:>10} / "
              f"{lat['off']['median']:<10} us")
        print(f"  {'timer latency p99':<28} {lat['on']['p99']:>10} / {lat['off']['p99']:<10} us")
