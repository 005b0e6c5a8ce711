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
- ``hypercall_ratio`` = hypercall / exit floor (target <= 1.5 on hardware);
- ``policy_ratio`` = hypercall / Python floor (target <= 1.3): what the
  Host's policy adds to the cheapest possible Python exit;
- the own guest's micro benchmarks (images/lgk booted with ``bench`` and a
  scratch disk): ``guest_syscall_ns``, ``pagefault_ns``, ``ctxswitch_ns``,
  ``pte_batch_ns``, ``timer_latency_ns``, ``blk_read_mbps``,
  ``blk_write_mbps``, timed in the guest with rdtsc.
"""
from __future__ import annotations

import argparse
import json
import os

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


# lgk's "bench:" keys -> this benchmark's keys (the names).
GUEST_KEYS = {"syscall_ns": "guest_syscall_ns", "pagefault_ns": "pagefault_ns",
              "ctxswitch_ns": "ctxswitch_ns", "pte_batch_ns": "pte_batch_ns",
              "timer_latency_ns": "timer_latency_ns", "blk_read_mbps": "blk_read_mbps",
              "blk_write_mbps": "blk_write_mbps", "null_hypercall_ns": "guest_hypercall_ns"}
DISK_BYTES = 16 << 20


def guest_benchmarks() -> dict:
    """Boot the own guest (images/lgk) with `bench` and a scratch disk and
    collect its one machine-readable `bench:` line."""
    import io
    import re
    import tempfile
    from .run import BUNDLED_GUEST, GuestConfig, Session
    with tempfile.NamedTemporaryFile(prefix="lgk-bench-", suffix=".img") as disk:
        disk.truncate(DISK_BYTES)
        console = io.BytesIO()
        config = GuestConfig(kernel=BUNDLED_GUEST, mem=64 << 20, cmdline="bench",
                             devices_spec=[("block", (disk.name, False))], console=console,
                             timeout=600)
        session = Session(config)
        try:
            outcome = session.run()
        finally:
            session.close()
    text = console.getvalue().decode("utf-8", "replace")
    line = re.search(r"^bench: (.*)$", text, re.M)
    if outcome.kind != "poweroff" or line is None:
        raise RuntimeError(f"the own guest's benchmarks did not finish: {outcome.message}")
    values = dict(kv.split("=", 1) for kv in line.group(1).split())
    return {GUEST_KEYS[k]: float(v) for k, v in values.items() if k in GUEST_KEYS}


def measure(n: int, guest: bool = True) -> dict:
    c_floor, py_floor = exit_floors(n)
    hcall, exits = hypercall_cost(n)
    extra = guest_benchmarks() if guest else {}
    return extra | {
        "kvm": "testbed" if os.environ.get("LGUEST_IN_TESTBED") else "native",
        "iterations": n,
        "exit_floor_ns": round(c_floor, 1),
        "py_exit_floor_ns": round(py_floor, 1),
        "hypercall_ns": round(hcall, 1),
        "hypercall_ratio": round(hcall / c_floor, 3),
        "policy_ratio": round(hcall / py_floor, 3),
        "hypercall_exits": exits,
    }


def print_table(result: dict) -> None:
    print(f"lguest-on-KVM benchmark ({result['kvm']} KVM, {result['iterations']} iterations)")
    rows = [("exit floor (C loop)", f"{result['exit_floor_ns']:.0f} ns"),
            ("exit floor (Python loop)", f"{result['py_exit_floor_ns']:.0f} ns"),
            ("null hypercall", f"{result['hypercall_ns']:.0f} ns"),
            ("hypercall / C floor", f"{result['hypercall_ratio']:.2f}  (target <= 1.5 on hardware)"),
            ("hypercall / Python floor", f"{result['policy_ratio']:.2f}  (target <= 1.3)")]
    for key, unit in (("guest_syscall_ns", "ns"), ("pagefault_ns", "ns"), ("ctxswitch_ns", "ns"),
                      ("pte_batch_ns", "ns"), ("timer_latency_ns", "ns"),
                      ("blk_read_mbps", "MB/s"), ("blk_write_mbps", "MB/s")):
        if key in result:
            rows.append((f"guest {key.rsplit('_', 1)[0].replace('guest_', '')}",
                         f"{result[key]:.1f} {unit}"))
    for name, value in rows:
        print(f"  {name:<26} {value}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="launcher-bench", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("-n", "--iterations", type=int, default=None,
                   help="exits per measurement (default 20000 natively, 3000 in the testbed)")
    p.add_argument("--no-guest", action="store_true",
                   help="skip the own guest's micro benchmarks (syscall, page fault, disk...)")
    p.add_argument("--no-testbed", action="store_true",
                   help="do not re-run inside the testbed when this KVM cannot run our guests")
    args = p.parse_args(argv)
    from .cli import kvm_ready
    status = kvm_ready(args, module="launcher.bench")
    if status is not None:
        return status
    n = args.iterations or (3000 if os.environ.get("LGUEST_IN_TESTBED") else 20000)
    result = measure(n, guest=not args.no_guest)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
