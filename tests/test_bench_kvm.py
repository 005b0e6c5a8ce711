"""launcher-bench prints one JSON object with the keys later work relies on."""
import json
import os
import subprocess
import sys

import pytest

from kvm_support import require_kvm

pytestmark = pytest.mark.kvm

KEYS = {"kvm", "exit_floor_ns", "py_exit_floor_ns", "hypercall_floor_ns", "hypercall_ns",
        "hypercall_ratio", "policy_ratio", "guest_syscall_ns", "host_syscall_ns",
        "syscall_ratio", "pagefault_ns", "pagefault_exits_per_fault", "ctxswitch_ns",
        "ctxswitch_exits_per_switch", "blk_read_mbps", "blk_write_mbps", "host_read_mbps",
        "host_write_mbps", "blk_read_ratio", "timer_latency_us_median", "timer_latency_us_p99",
        "boot_ms", "launcher_rss_mb", "guest_hypercall_exits", "guest_syscall_exits"}


def test_bench_json_has_every_key_with_sane_figures():
    require_kvm()
    # The real kernels' figures are the benchmark's, not this test's: leave them out.
    env = {k: v for k, v in os.environ.items() if k != "LGUEST_TEST_KERNELS"}
    run = subprocess.run([sys.executable, "-m", "launcher.bench", "--json", "-n", "300",
                          "--idle-seconds", "4"],
                         capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert KEYS <= set(result)
    assert result["kvm"] in ("native", "testbed")
    assert 0 < result["exit_floor_ns"] < result["hypercall_ns"]
    assert result["hypercall_ratio"] == pytest.approx(
        result["hypercall_ns"] / result["exit_floor_ns"], rel=0.01)
    assert result["hypercall_exits"] == 300 + 2        # the loop, INIT and SHUTDOWN
    assert result["blk_read_mbps"] > 0 and result["blk_write_mbps"] > 0
    # Exits per operation are counted exactly between the guest's markers.
    assert result["guest_hypercall_exits"] == 1 and result["guest_syscall_exits"] == 0
    assert result["pagefault_exits_per_fault"] < 0.1       # the Switcher's fast path
    assert result["policy_ratio"] == pytest.approx(
        result["hypercall_ns"] / result["hypercall_floor_ns"], rel=0.01)
    assert 0 < result["timer_latency_us_median"] <= result["timer_latency_us_p99"]
    assert 0 < result["launcher_rss_mb"] < 200 and result["boot_ms"] > 0
    # The steady state, both ways in the same run: the own guest idling with
    # its 10 ms tick makes no exits with the clock in the VM, ~100 a second
    # through Python.
    steady = result["steady"]
    idle = steady["idle_exits_per_s"]["lgk periodic tick"]
    assert idle["on"] <= 1 and idle["off"] > 50, idle
    assert set(steady["idle_host_cpu_pct"]) == set(steady["idle_exits_per_s"])
    # The vCPU's time inside KVM_RUN is told apart (the shim's count of
    # it): an idle guest's ticks, halts and the guest's own work are there.
    kvm_cpu = steady["idle_kvm_cpu_pct"]["lgk periodic tick"]
    assert kvm_cpu["on"] > 0 and kvm_cpu["off"] > 0, kvm_cpu
    latency = steady["timer_latency_us"]
    assert 0 < latency["on"]["median"] <= latency["on"]["p99"]
    assert 0 < latency["off"]["median"] <= latency["off"]["p99"]
