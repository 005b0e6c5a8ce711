"""The Python API (launcher/api.py) where no guest runs: usage errors come
back as LauncherError in the launcher's words, and the verdict is told from
narration. tests/test_api_kvm.py drives real guests."""
from __future__ import annotations

import pytest

from launcher.api import Guest, LauncherError, verdict


def test_a_missing_kernel_is_a_launcher_error_with_its_reason(tmp_path):
    missing = str(tmp_path / "bzImage")
    with Guest(missing) as g:
        with pytest.raises(LauncherError) as err:
            g.expect(r"# ", timeout=60)
    assert err.value.status == 2
    assert err.value.reason == f"launcher: {missing}: no such file (the kernel)"
    assert str(err.value) == err.value.reason
    with Guest(missing) as g, pytest.raises(LauncherError, match="no such file"):
        g.wait(timeout=60)


def test_bad_option_is_a_launcher_error():
    with Guest(extra=["--net", "tap"]) as g, pytest.raises(LauncherError, match="only `user`"):
        g.wait(timeout=60)


def test_guest_args_without_a_kernel_go_to_the_bundled_guest():
    g = Guest(args=["echo", "bench"], mem="32M")
    assert g.argv[-3:] == ["--", "echo", "bench"]
    assert "launcher" in g.argv and not any(a.endswith("bzImage") for a in g.argv)


def test_verdict_skips_narration():
    err = ("launcher: [0.01 s] /dev/kvm cannot run 32-bit paged guests; running inside the "
           "testbed VM instead (slow but real KVM)\n"
           "launcher: guest killed: unhandled trap 13\n"
           "launcher: [9.50 s] the testbed VM finished (status 1)\n")
    assert verdict(err, 1) == "launcher: guest killed: unhandled trap 13"
    assert verdict(err.splitlines()[0] + "\n", 0) == ""       # a clean power-off
    assert verdict("", 124) == ""
