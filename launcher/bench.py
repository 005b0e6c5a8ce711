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
  Host's policy adds to the cheapest possible Python exit.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

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


def measure(n: int) -> dict:
    c_floor, py_floor = exit_floors(n)
    hcall, exits = hypercall_cost(n)
    return {
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
    for name, value in rows:
        print(f"  {name:<26} {value}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="launcher-bench", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("-n", "--iterations", type=int, default=None,
                   help="exits per measurement (default 20000 natively, 3000 in the testbed)")
    p.add_argument("--no-testbed", action="store_true",
                   help="do not re-run inside the testbed when this KVM cannot run our guests")
    args = p.parse_args(argv)
    from .cli import kvm_ready
    status = kvm_ready(args, module="launcher.bench")
    if status is not None:
        return status
    n = args.iterations or (3000 if os.environ.get("LGUEST_IN_TESTBED") else 20000)
    result = measure(n)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
