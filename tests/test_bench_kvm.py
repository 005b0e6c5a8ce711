"""launcher-bench prints one JSON object with the keys later work relies on."""
import json
import subprocess
import sys

import pytest

from kvm_support import require_kvm

pytestmark = pytest.mark.kvm

KEYS = {"kvm", "exit_floor_ns", "py_exit_floor_ns", "hypercall_ns", "hypercall_ratio",
        "policy_ratio", "guest_syscall_ns", "pagefault_ns", "ctxswitch_ns",
        "blk_read_mbps", "blk_write_mbps"}


def test_bench_json_has_every_key_with_sane_figures():
    require_kvm()
    out = subprocess.run([sys.executable, "-m", "launcher.bench", "--json", "-n", "300"],
                         capture_output=True, text=True, timeout=900, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert KEYS <= set(result)
    assert result["kvm"] in ("native", "testbed")
    assert 0 < result["exit_floor_ns"] < result["hypercall_ns"]
    assert result["hypercall_ratio"] == pytest.approx(
        result["hypercall_ns"] / result["exit_floor_ns"], rel=0.01)
    assert result["hypercall_exits"] == 300 + 2        # the loop, INIT and SHUTDOWN
    assert result["blk_read_mbps"] > 0 and result["blk_write_mbps"] > 0
