"""``launcher-bench``: what an exit costs, measured against the floor.

Every figure comes from one run in one place. Where this host's KVM cannot
run our guests the whole benchmark re-runs inside the testbed and says
``"kvm": "testbed"``; absolute numbers there are ~10-30x a hardware KVM's,
so read the ratios:

- ``exit_floor_ns``: a bare `out` loop driven from C (KVM's own floor here);
- ``py_exit_floor_ns``: the same loop driven from a minimal Python loop
  through the cffi module (Python's own floor);
- ``hypercall_ns``: a null hypercall from the guest, through the Switcher
  and the Python Host, timed by the guest with rdtsc;
- ``hypercall_floor_ns``: the same null hypercall through the Switcher,
  resumed by a bare Python loop that only checks the exit (no Host);
- ``hypercall_ratio`` = hypercall / exit floor (target <= 1.5 on hardware);
- ``policy_ratio`` = hypercall / hypercall floor (target <= 1.3): what the
  Host's Python adds to a bare Python loop over the very same exits
  (``exit_py_ratio`` = hypercall / Python out-loop floor is kept too: it
  also counts the Switcher's own instructions);
- the host's own baselines, measured in the same place: ``host_syscall_ns``
  (getppid timed in C), ``host_read_mbps`` / ``host_write_mbps`` (the guest's
  disk pattern on the same file, from the host);
- the own guest's micro benchmarks (images/lgk booted with ``bench`` and a
  scratch disk): ``guest_syscall_ns``, ``pagefault_ns``, ``ctxswitch_ns``,
  ``pte_batch_ns``, ``timer_latency_us`` median and p99, ``blk_read_mbps``,
  ``blk_write_mbps``, timed in the guest with rdtsc, each with the exits it
  took per operation (``*_exits``, counted between the guest's markers);
- ``boot_ms`` of the own guest to its first self-test line and
  ``launcher_rss_mb``, the launcher's resident memory beyond guest RAM;
- with ``LGUEST_TEST_KERNELS`` (and ``LGUEST_TEST_INITRD``, plus
  ``LGUEST_TEST_INITRD_2_6`` for 2.6 kernels) set,
  ``linux_boot_ms`` and ``linux_boot_exits`` per kernel, to the first
  userspace line;
- the steady state, fast paths on and off (launcher/benchsteady.py):
  ``idle_exits_per_s``, ``idle_host_cpu_pct``, ``idle_kvm_cpu_pct``,
  ``linux_boot_exits``,
  ``syscall_exits``, ``g3_syscall_exits``, ``timer_latency_us``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

from .kvm import ffi, lib
from .loader import load_elf
from .machine import Machine
from .switcher import DATA_DIR

HELLO_GUEST = os.path.join(DATA_DIR, "hello.elf")    # images/hello: a null-hypercall loop


def exit_floors(n: int) -> tuple[float, float]:
    """(C floor, Python floor) in ns per exit, on one fresh VM."""
    machine = Machine(16 << 20)
    try:
        vcpu, port = machine.vcpu, machine.image.SW_EXIT_PORT
        regs = vcpu.get_regs()
        regs.rip = machine.image.bench_out_loop
        vcpu.set_regs(regs)
        elapsed = ffi.new("uint64_t *")
        lib.shim_bench_exit_loop(vcpu.shim, min(n, 1000), port, elapsed)   # warm up
        if lib.shim_bench_exit_loop(vcpu.shim, n, port, elapsed) != n:
            raise RuntimeError("the exit-floor loop did not exit as expected")
        c_floor = elapsed[0] / n
        run, shim, io, io_exit = lib.shim_vcpu_run, vcpu.shim, vcpu.io, lib.KVM_EXIT_IO
        start = lib.shim_monotonic_ns()
        for _ in range(n):
            if run(shim) != io_exit or io.port != port:
                raise RuntimeError("the Python exit-floor loop did not exit as expected")
        py_floor = (lib.shim_monotonic_ns() - start) / n
        return c_floor, py_floor
    finally:
        machine.close()


def hypercall_cost(n: int) -> tuple[float, int]:
    """ns per null hypercall as the guest's rdtsc sees it, and the exits taken."""
    from .host import Host
    machine = Machine(16 << 20)
    try:
        image = load_elf(machine.memory, HELLO_GUEST, want_symbols=True)
        machine.set_start(image.symbols["bench_hcall"], ebp=n)
        host = Host(machine)
        outcome = host.run()
        if outcome.kind != "poweroff":
            raise RuntimeError(f"the benchmark guest did not finish: {outcome.message}")
        cycles = machine.memory.u64(image.symbols["bench_cycles"])
        if not machine.tsc_khz:
            raise RuntimeError("KVM reports no TSC frequency")
        return cycles * 1e6 / machine.tsc_khz / n, sum(host.trap_counts.values())
    finally:
        machine.close()


def hypercall_floor(n: int) -> float:
    """ns per null hypercall with no Host at all: the hello guest's loop
    through the Switcher, resumed by a Python loop that only checks that
    each exit is the Switcher's and stops at the SHUTDOWN at the end."""
    from .host.hypercalls import LHCALL_SHUTDOWN
    from .switcher import EAX
    machine = Machine(16 << 20)
    try:
        image = load_elf(machine.memory, HELLO_GUEST, want_symbols=True)
        machine.set_start(image.symbols["bench_hcall"], ebp=n)
        machine.requests.publish()
        run, shim, io, io_exit = lib.shim_vcpu_run, machine.vcpu.shim, machine.vcpu.io, \
            lib.KVM_EXIT_IO
        port, regs = machine.image.SW_EXIT_PORT, machine.regs
        for _ in range(n + 3):
            if run(shim) != io_exit or io.port != port:
                raise RuntimeError("the hypercall-floor guest did not exit as expected")
            if regs[EAX] == LHCALL_SHUTDOWN:
                break
        else:
            raise RuntimeError("the hypercall-floor guest never finished")
        cycles = machine.memory.u64(image.symbols["bench_cycles"])
        return cycles * 1e6 / machine.tsc_khz / n
    finally:
        machine.close()


def host_baselines(path: str, nbytes: int = 4 << 20, chunk: int = 64 << 10) -> dict:
    """The host side of the guest's numbers, on the same file: getppid in C,
    and the guest's disk pattern (sequential 64 KiB, written then one
    fdatasync, then read) with os.pwrite/os.pread."""
    n = 20000
    syscall = lib.shim_bench_getppid(n) / n
    buf = os.urandom(chunk)
    fd = os.open(path, os.O_RDWR)
    try:
        start = time.perf_counter()
        for off in range(0, nbytes, chunk):
            os.pwrite(fd, buf, (1 << 20) + off)
        os.fdatasync(fd)
        write_s = time.perf_counter() - start
        start = time.perf_counter()
        for off in range(0, nbytes, chunk):
            os.pread(fd, chunk, (1 << 20) + off)
        read_s = time.perf_counter() - start
    finally:
        os.close(fd)
    return {"host_syscall_ns": round(syscall, 1),
            "host_write_mbps": round(nbytes / write_s / 1e6, 1),
            "host_read_mbps": round(nbytes / read_s / 1e6, 1)}


# lgk's "bench:" keys -> this benchmark's keys (the names).
GUEST_KEYS = {"syscall_ns": "guest_syscall_ns", "pagefault_ns": "pagefault_ns",
              "ctxswitch_ns": "ctxswitch_ns", "pte_batch_ns": "pte_batch_ns",
              "timer_latency_ns": "timer_latency_ns", "blk_read_mbps": "blk_read_mbps",
              "blk_write_mbps": "blk_write_mbps", "null_hypercall_ns": "guest_hypercall_ns"}
DISK_BYTES = 16 << 20
BLK_BENCH_MIB = 4                # what lgk's disk benchmark moves each way
# lgk's markers -> (key, operations between them): exits per operation.
MARKED_OPS = {"hcall": ("guest_hypercall_exits", 1000), "syscall": ("guest_syscall_exits", 20000),
              "fault": ("pagefault_exits_per_fault", 256),
              "switch": ("ctxswitch_exits_per_switch", 400),
              "ptebatch": ("pte_batch_exits", 1), "timer": ("timer_exits_per_event", 100),
              "blkwrite": ("blk_write_exits_per_mib", BLK_BENCH_MIB),
              "blkread": ("blk_read_exits_per_mib", BLK_BENCH_MIB)}
# Work inside a bracket that is not the operation: the tasks it starts.
TASKS_IN = {"syscall": 1, "fault": 1, "switch": 2}


class MarkedConsole:
    """The guest's console output, plus the exit count at each of its
    "@b:" / "@e:" markers (which arrive on the Host's exit path)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.marks: list[tuple[str, int]] = []
        self.first_selftest_ns: int | None = None
        self.session = None

    def write(self, data: bytes) -> int:
        if data[:3] in (b"@b:", b"@e:") and self.session and self.session.host:
            host = self.session.host
            self.marks.append((data[:-1].decode(), sum(host.trap_counts.values())))
        else:
            self.out += data
            if self.first_selftest_ns is None and b"selftest:" in self.out:
                self.first_selftest_ns = time.monotonic_ns()
        return len(data)

    def flush(self) -> None:
        pass

    def exits_between(self, name: str) -> int | None:
        begin = next((n for m, n in self.marks if m == f"@b:{name}"), None)
        end = next((n for m, n in self.marks if m == f"@e:{name}"), None)
        return None if begin is None or end is None else end - begin - 1


def exits_per_operation(console: MarkedConsole) -> dict:
    task = console.exits_between("task") or 0
    out = {}
    for name, (key, ops) in MARKED_OPS.items():
        exits = console.exits_between(name)
        if exits is not None:
            out[key] = round(max(0, exits - TASKS_IN.get(name, 0) * task) / ops, 3)
    return out


class RssSampler:
    """The launcher's resident memory beyond guest RAM while a guest runs:
    VmRSS less RssShmem (guest RAM is a shared anonymous mapping)."""

    def __init__(self, period: float = 0.05) -> None:
        self.peak_kb = 0
        self.period = period
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def sample_kb() -> int:
        fields = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssShmem"):
                    fields[key] = int(value.split()[0])
        return fields.get("VmRSS", 0) - fields.get("RssShmem", 0)

    def _loop(self) -> None:
        while not self.done.is_set():
            self.peak_kb = max(self.peak_kb, self.sample_kb())
            self.done.wait(self.period)

    def __enter__(self) -> "RssSampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


def run_own_guest(cmdline: str, disk: str | None = None, fast_traps: bool = True,
                  fast_clock: bool = True) -> tuple[MarkedConsole, object, int]:
    """Boot the bundled guest in-process; (console, outcome, start ns)."""
    from .run import BUNDLED_GUEST, GuestConfig, Session
    console = MarkedConsole()
    devices = [("block", (disk, False))] if disk else []
    config = GuestConfig(kernel=BUNDLED_GUEST, mem=64 << 20, cmdline=cmdline,
                         devices_spec=devices, console=console, timeout=600,
                         fast_traps=fast_traps, fast_clock=fast_clock)
    start = time.monotonic_ns()
    session = Session(config)
    console.session = session
    try:
        outcome = session.run()
    finally:
        session.close()
    return console, outcome, start


def guest_benchmarks(fast_traps: bool = True) -> dict:
    """Boot the own guest (images/lgk) with `bench` and a scratch disk and
    collect its one machine-readable `bench:` line, the exits between its
    markers, and the host's baselines on the same disk file; then boot it
    plainly for boot_ms and launcher_rss_mb."""
    import re
    import tempfile
    with tempfile.NamedTemporaryFile(prefix="lgk-bench-", suffix=".img") as disk:
        disk.truncate(DISK_BYTES)
        console, outcome, _ = run_own_guest("bench diskwrite", disk.name, fast_traps)
        host = host_baselines(disk.name)
    text = console.out.decode("utf-8", "replace")
    line = re.search(r"^bench: (.*)$", text, re.M)
    if outcome.kind != "poweroff" or line is None:
        raise RuntimeError(f"the own guest's benchmarks did not finish: {outcome.message}")
    values = dict(kv.split("=", 1) for kv in line.group(1).split())
    result = {GUEST_KEYS[k]: float(v) for k, v in values.items() if k in GUEST_KEYS}
    for k, key in (("timer_latency_median_ns", "timer_latency_us_median"),
                   ("timer_latency_p99_ns", "timer_latency_us_p99")):
        if k in values:
            result[key] = round(float(values[k]) / 1000, 1)
    result |= exits_per_operation(console) | host
    if "guest_syscall_ns" in result:
        result["syscall_ratio"] = round(result["guest_syscall_ns"] / host["host_syscall_ns"], 3)
    for kind in ("read", "write"):
        if f"blk_{kind}_mbps" in result:
            result[f"blk_{kind}_ratio"] = round(result[f"blk_{kind}_mbps"]
                                                / host[f"host_{kind}_mbps"], 3)
    with RssSampler() as rss:
        console, outcome, start = run_own_guest("", fast_traps=fast_traps)
    if outcome.kind != "poweroff" or console.first_selftest_ns is None:
        raise RuntimeError(f"the own guest did not pass its self-tests: {outcome.message}")
    result["boot_ms"] = round((console.first_selftest_ns - start) / 1e6, 1)
    result["launcher_rss_mb"] = round(rss.peak_kb / 1024, 1)
    return result


def kernel_release(kernel: str) -> tuple[int, int, int]:
    """(2, 6, 32) for a Linux 2.6.32 image file, from its version string;
    (0, 0, 0) for one without (the own guest)."""
    from .bootparams import kernel_version, read_image
    from .generations import release
    return release(kernel_version(read_image(kernel))) or (0, 0, 0)


def initrd_for_kernel(kernel: str) -> str | None:
    """The initramfs LGUEST_TEST_INITRD names, or for a Linux 2.6 kernel
    LGUEST_TEST_INITRD_2_6 if set: 2.6 kernels need a userland that does
    not ask for Linux 3.2 (README, "Guest kernels")."""
    initrd = os.environ.get("LGUEST_TEST_INITRD")
    if kernel_release(kernel)[:2] == (2, 6):
        return os.environ.get("LGUEST_TEST_INITRD_2_6") or initrd
    return initrd


def linux_boots() -> dict:
    """With LGUEST_TEST_KERNELS and LGUEST_TEST_INITRD: each kernel booted
    to its first userspace line ("userspace up"); time and exits."""
    from .run import GuestConfig, Session
    kernels = [k for k in os.environ.get("LGUEST_TEST_KERNELS", "").split(":") if k]
    initrd = os.environ.get("LGUEST_TEST_INITRD")
    if not kernels or not initrd:
        return {}
    boots = {}
    for kernel in kernels:
        console = LineWatch(b"userspace up")
        config = GuestConfig(kernel=kernel, mem=128 << 20, initrd=initrd_for_kernel(kernel),
                             console=console, timeout=900, reboot=False)
        session = Session(config)
        console.on_match = lambda s=session: s.host.stop("poweroff", "benchmark done")
        start = time.monotonic_ns()
        try:
            session.run()
            host = session.host
            exits = sum(host.trap_counts.values()) + host.mmio_exits
        finally:
            session.close()
        if console.matched_ns is None:
            raise RuntimeError(f"{kernel} did not reach userspace")
        boots[os.path.basename(kernel)] = {"linux_boot_ms": round((console.matched_ns - start) / 1e6),
                                           "linux_boot_exits": exits}
    return {"linux": boots}


class LineWatch:
    """A console that notes when a pattern first appears and calls on_match."""

    def __init__(self, pattern: bytes) -> None:
        self.pattern, self.tail, self.matched_ns = pattern, b"", None
        self.on_match = lambda: None

    def write(self, data: bytes) -> int:
        if self.matched_ns is None:
            self.tail = (self.tail + data)[-256:]
            if self.pattern in self.tail:
                self.matched_ns = time.monotonic_ns()
                self.on_match()
        return len(data)

    def flush(self) -> None:
        pass


def measure(n: int, guest: bool = True, fast_traps: bool = True,
            steady_seconds: int = 0) -> dict:
    c_floor, py_floor = exit_floors(n)
    floor = hypercall_floor(n)
    hcall, exits = hypercall_cost(n)
    extra = guest_benchmarks(fast_traps) if guest else {}
    if steady_seconds:
        from .benchsteady import measure_steady
        extra |= {"steady": measure_steady(steady_seconds)}
    return extra | linux_boots() | {
        "kvm": "testbed" if os.environ.get("LGUEST_IN_TESTBED") else "native",
        "fast_traps": fast_traps,
        "iterations": n,
        "exit_floor_ns": round(c_floor, 1),
        "py_exit_floor_ns": round(py_floor, 1),
        "hypercall_floor_ns": round(floor, 1),
        "hypercall_ns": round(hcall, 1),
        "hypercall_ratio": round(hcall / c_floor, 3),
        "policy_ratio": round(hcall / floor, 3),
        "exit_py_ratio": round(hcall / py_floor, 3),
        "hypercall_exits": exits,
    }


TABLE = [("exit floor (C loop)", "exit_floor_ns", "ns"),
         ("exit floor (Python loop)", "py_exit_floor_ns", "ns"),
         ("hypercall floor (bare loop)", "hypercall_floor_ns", "ns"),
         ("null hypercall", "hypercall_ns", "ns"),
         ("hypercall / C floor", "hypercall_ratio", "(target <= 1.5 on hardware)"),
         ("hypercall / its floor", "policy_ratio", "(target <= 1.3)"),
         ("guest syscall", "guest_syscall_ns", "ns"),
         ("host syscall", "host_syscall_ns", "ns"),
         ("syscall ratio", "syscall_ratio", "(target <= 1.0)"),
         ("page fault", "pagefault_ns", "ns"),
         ("  exits per fault", "pagefault_exits_per_fault", ""),
         ("context switch", "ctxswitch_ns", "ns"),
         ("  exits per switch", "ctxswitch_exits_per_switch", ""),
         ("64-PTE batch", "pte_batch_ns", "ns"),
         ("  exits per batch", "pte_batch_exits", ""),
         ("timer latency median", "timer_latency_us_median", "us"),
         ("timer latency p99", "timer_latency_us_p99", "us"),
         ("disk read (guest)", "blk_read_mbps", "MB/s"),
         ("disk read (host)", "host_read_mbps", "MB/s"),
         ("disk read ratio", "blk_read_ratio", "(target >= 0.5)"),
         ("disk write (guest)", "blk_write_mbps", "MB/s"),
         ("disk write (host)", "host_write_mbps", "MB/s"),
         ("own guest boot", "boot_ms", "ms"),
         ("launcher RSS beyond RAM", "launcher_rss_mb", "MB (target <= 40)")]


def print_table(result: dict) -> None:
    print(f"lguest-on-KVM benchmark ({result['kvm']} KVM, {result['iterations']} iterations)")
    for name, key, unit in TABLE:
        if key in result:
            value = result[key]
            text = f"{value:.0f}" if isinstance(value, float) and value >= 100 else f"{value}"
            print(f"  {name:<28} {text} {unit}")
    for kernel, boot in result.get("linux", {}).items():
        print(f"  {'Linux ' + kernel:<28} {boot['linux_boot_ms']} ms, "
              f"{boot['linux_boot_exits']} exits to userspace")
    if "steady" in result:
        from .benchsteady import print_steady
        print_steady(result["steady"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="launcher-bench", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("-n", "--iterations", type=int, default=None,
                   help="exits per measurement (default 20000 natively, 3000 in the testbed)")
    p.add_argument("--no-guest", action="store_true",
                   help="skip the own guest's micro benchmarks (syscall, page fault, disk...)")
    p.add_argument("--no-fast-traps", action="store_true",
                   help="run the own guest's benchmarks with every page fault through Python")
    p.add_argument("--idle-seconds", type=int, default=10, metavar="N",
                   help="how long each guest idles for the steady-state figures "
                        "(default 10; 0 skips them)")
    p.add_argument("--no-testbed", action="store_true",
                   help="do not re-run inside the testbed when this KVM cannot run our guests")
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    from .cli import kvm_ready
    status = kvm_ready(args, argv, module="launcher.bench")
    if status is not None:
        return status
    n = args.iterations or (3000 if os.environ.get("LGUEST_IN_TESTBED") else 20000)
    result = measure(n, guest=not args.no_guest, fast_traps=not args.no_fast_traps,
                     steady_seconds=0 if args.no_guest else args.idle_seconds)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
