"""``launcher-bench``'s steady-state figures: what keeping a guest running
costs, with the fast paths on and off in the same run.

Exits are the currency here: their counts do not depend on the machine,
unlike times in the testbed. Each figure is a ``{"on": x, "off": y}`` pair
(``off``: LGUEST_FAST_PATHS=off's reference behaviour, every event through
the Python Host):

- ``idle_exits_per_s`` / ``idle_host_cpu_pct``: exits per second, and the
  launcher's CPU time as a share of one core, while a guest idles (its
  threads' time, less the vCPU thread's inside KVM_RUN: KVM's work for the
  guest's own ticks and halts is KVM's, reported as ``idle_kvm_cpu_pct``;
  on a real KVM it is a few microseconds a tick): the own
  guest (images/lgk ``idle=``) with its periodic 10 ms tick and with a
  one-shot clock, and with LGUEST_TEST_KERNELS each real kernel's shell
  waiting in ``read -t`` (from 3 s after the console's last output: typing
  the command and its echo are not idle);
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
from typing import TYPE_CHECKING

from .bench import initrd_for_kernel
from .run import BUNDLED_GUEST, GuestConfig, Session

if TYPE_CHECKING:
    from .kvm import Vcpu

IDLE_SECONDS = 10
IDLE_SETTLE = 3                    # seconds of a real kernel's idle not counted
ECHO_ALLOWANCE = 15                # seconds the shell's `read` waits beyond the window
SYSCALL_BYTES = 5000               # dd bs=1: one read and one write each


def cpu_split_ns(vcpu: "Vcpu | None") -> tuple[int, int]:
    """(the launcher's own CPU time, KVM_RUN's) so far: the whole
    process's time (scheduler-exact) less what its vCPU thread spent inside
    KVM_RUN, which is KVM's work and the guest's code, not ours; and that
    (counted from when Marks.account first ran)."""
    inside = vcpu.run_time_ns() if vcpu is not None else 0
    return time.process_time_ns() - inside, inside


class Marks:
    """Exits, wall time and the launcher's CPU time at named moments."""

    def __init__(self) -> None:
        self.session: Session | None = None
        self.at: dict[str, tuple[int, int, int, int]] = {}

    def note(self, name: str) -> None:
        host = self.session.host if self.session else None
        exits = sum(host.trap_counts.values()) + host.mmio_exits if host else 0
        self.at[name] = (exits, time.monotonic_ns(),
                         *cpu_split_ns(host.machine.vcpu if host else None))

    def account(self) -> None:
        """Have the shim count KVM_RUN's CPU time from the next KVM_RUN on.
        Called at every console write, so it is on long before a window
        begins: a KVM_RUN already under way when it is turned on is never
        counted, and an idle guest's one KVM_RUN can last a whole window."""
        host = self.session.host if self.session else None
        if host is not None:
            host.machine.vcpu.count_run_time()

    def between(self, begin: str, end: str) -> tuple[int, float, float, float]:
        """(exits, seconds, the launcher's CPU seconds, KVM_RUN's CPU
        seconds) from one mark to the next."""
        (e0, t0, c0, k0), (e1, t1, c1, k1) = self.at[begin], self.at[end]
        return e1 - e0, (t1 - t0) / 1e9, (c1 - c0) / 1e9, (k1 - k0) / 1e9


class OwnGuestConsole(Marks):
    """lgk's console: its "@b:idle" / "@e:idle" lines are marks (they reach
    us synchronously, on the exit that writes them)."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()

    def write(self, data: bytes) -> int:
        self.account()
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
    exits, seconds_, cpu, kvm = console.between("@b:idle", "@e:idle")
    return {"exits_per_s": exits / seconds_, "cpu_pct": max(0.0, 100 * cpu / seconds_),
            "kvm_cpu_pct": 100 * kvm / seconds_}


class ShellConsole(Marks):
    """A real kernel's console driven like a user would: at its prompt, type
    each step's command; a step ends when its marker line appears (made
    with shell arithmetic, so the echo of the command never matches).

    One step may hold a quiet window: "begin" and "end" marks ``seconds``
    apart, starting once the console has been silent for ``settle``
    seconds. The echo of a typed command can take seconds in a slow
    testbed; any output before the window ends starts it over."""

    def __init__(self, steps: list[tuple[str, bytes]], input_fd: int,
                 quiet: tuple[int, float, float, str] | None = None) -> None:
        super().__init__()
        self.steps, self.input_fd = steps, input_fd
        self.quiet = quiet                  # (step, settle, seconds, name)
        self.quiet_done = False
        self.lock = threading.Lock()
        self.timer: threading.Timer | None = None
        self.tail = b""
        self.step = -1                      # -1: booting

    def write(self, data: bytes) -> int:
        self.account()
        self.tail = (self.tail + data)[-512:]
        if self.step == -1 and b"userspace up" in self.tail:
            self.note("userspace")
            self.step, self.tail = 0, b""
        if self.step == 0 and b"# " in self.tail:     # the prompt (ash may add ESC[6n)
            self._next()
        elif 0 < self.step <= len(self.steps) and self.steps[self.step - 1][1] in self.tail:
            self._next()
        elif self.quiet and self.step == self.quiet[0] + 1:
            self._quiet_from_now()
        return len(data)

    def _next(self) -> None:
        self.note(f"step{self.step}")
        self.tail = b""
        with self.lock:
            if self.timer is not None:
                self.timer.cancel()
        if self.step < len(self.steps):
            os.write(self.input_fd, self.steps[self.step][0].encode())
        else:
            os.write(self.input_fd, b"poweroff -f\n")
        self.step += 1
        if self.quiet and self.step == self.quiet[0] + 1:
            self._quiet_from_now()          # the command typed: the window may begin

    def _quiet_from_now(self) -> None:
        """Output (or the command typed): the quiet window starts over."""
        with self.lock:
            if self.quiet_done:
                return
            if self.timer is not None:
                self.timer.cancel()
            self._arm(self.quiet[1], "begin")

    def _quiet_mark(self, which: str) -> None:
        with self.lock:
            if self.quiet_done or threading.current_thread() is not self.timer:
                return                      # output came first: cancelled
            self.note(f"{self.quiet[3]}_{which}")
            if which == "end":
                self.quiet_done = True
                return
            self._arm(self.quiet[2], "end")

    def _arm(self, delay: float, which: str) -> None:
        """The quiet window's next mark, ``delay`` seconds on (lock held)."""
        self.timer = threading.Timer(delay, self._quiet_mark, (which,))
        self.timer.daemon = True
        self.timer.start()

    def flush(self) -> None:
        pass


def linux_steady(kernel: str, initrd: str, fast: bool, seconds: int = IDLE_SECONDS) -> dict:
    """Boot a real kernel, let it idle, run a system-call loop, power off.
    Idle is the shell waiting in its `read` builtin on a FIFO nobody writes
    (no fork or exec), counted from IDLE_SETTLE seconds after the console
    last wrote anything (the command's echo, the kernel's deferred work are
    not idle; the `read` waits long enough for a slow echo). Exits per
    system call are the difference of a long and an empty `dd`, so
    starting it cancels out."""
    def step(command: str, tag: str) -> tuple[str, bytes]:
        return f"{command}; echo {tag}-$((40+2))\n", f"{tag}-42".encode()
    dd = "dd if=/dev/zero of=/dev/null bs=1 count={} 2>/dev/null"
    steps = [step("mkfifo /idle.fifo; sleep 1", "warm"),
             step(f"read -t {IDLE_SETTLE + seconds + ECHO_ALLOWANCE} x <> /idle.fifo", "idle"),
             step(dd.format(0), "dd0"), step(dd.format(SYSCALL_BYTES), "ddn")]
    read_fd, write_fd = os.pipe()
    console = ShellConsole(steps, write_fd, quiet=(1, IDLE_SETTLE, seconds, "idle"))
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
    if not console.quiet_done:
        raise RuntimeError(f"{kernel}'s console was never quiet for {IDLE_SETTLE + seconds} s "
                           "while the shell idled")
    window = [console.between(f"step{i}", f"step{i + 1}") for i in range(len(steps))]
    idle_e, idle_s, idle_c, idle_k = console.between("idle_begin", "idle_end")
    dd_exits = window[3][0] - window[2][0]
    return {"boot_exits": console.at["userspace"][0],
            "exits_per_s": idle_e / idle_s,
            "cpu_pct": max(0.0, 100 * idle_c / idle_s), "kvm_cpu_pct": 100 * idle_k / idle_s,
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
    kvm_cpu: dict[str, dict] = {}
    for name, oneshot in (("lgk periodic tick", False), ("lgk one-shot clock", True)):
        for key, fast in both:
            r = own_guest_idle(oneshot, fast, seconds)
            idle.setdefault(name, {})[key] = round(r["exits_per_s"], 2)
            cpu.setdefault(name, {})[key] = round(r["cpu_pct"], 2)
            kvm_cpu.setdefault(name, {})[key] = round(r["kvm_cpu_pct"], 2)
    result: dict = {"idle_exits_per_s": idle, "idle_host_cpu_pct": cpu,
                    "idle_kvm_cpu_pct": kvm_cpu,
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
                kvm_cpu.setdefault(name, {})[key] = round(r["kvm_cpu_pct"], 2)
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
                      ("idle_kvm_cpu_pct", "% of a core idle inside KVM_RUN"),
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
