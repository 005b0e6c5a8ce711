"""The Python API for CI (launcher/api.py) on the bundled guest."""
import os

import pytest

from kvm_support import require_kvm
import launcher.api
from launcher.api import Guest, GuestEnded

pytestmark = pytest.mark.kvm


def test_expect_and_outcome():
    require_kvm()
    with Guest(mem="64M") as g:
        m = g.expect(r"selftest: (\d+) passed, (\d+) failed", timeout=240)
        assert m.group(2) == "0"
        result = g.wait(timeout=120)
    assert result.status == 0 and result.reason == ""
    assert "selftest: hypercalls_all_used ok" in result.transcript


def test_reason_and_status_of_a_crash():
    require_kvm()
    g = Guest(os.path.join(os.path.dirname(__file__), "..", "launcher", "data", "lgk.bzImage"),
              args=["hostile=nonsense"])
    with g:
        result = g.wait(timeout=240)
    assert result.status == 1
    assert result.reason.startswith("launcher: guest ")


def test_expect_gives_up_when_the_guest_has_ended():
    require_kvm()
    with Guest(extra=["--no-reboot"], kernel=os.path.join(
            os.path.dirname(__file__), "..", "launcher", "data", "lgk.bzImage"),
            args=["restart"]) as g:
        with pytest.raises(GuestEnded) as ended:
            g.expect("this never appears", timeout=240)
        assert g.wait().status == 3
    assert ended.value.status == 3
    assert ended.value.reason.startswith("launcher: guest asked to reboot")


def test_sigterm_stops_the_guest_cleanly_with_130():
    require_kvm()
    import time
    with Guest(os.path.join(os.path.dirname(__file__), "..", "launcher", "data", "lgk.bzImage"),
               args=["restart"]) as g:           # reboots forever until stopped
        g.expect(r"lgk: restarting", timeout=240)
        time.sleep(1)
        g.stop()                                 # SIGTERM to the launcher
        result = g.wait(timeout=60)
    assert result.status == 130, result.stderr
    assert result.reason == "launcher: interrupted"


def docstring_example(text: str) -> str:
    """The first indented block of a docstring, dedented: its example."""
    import textwrap
    block = text.split("\n\n")[1]
    return textwrap.dedent(block)


def test_the_modules_example_runs_as_written():
    # Copied as a reader would copy it: the bundled-guest example, verbatim.
    require_kvm()
    code = docstring_example(launcher.api.__doc__)
    assert code.startswith("from launcher.api import Guest")
    exec(compile(code, "api.py docstring", "exec"), {})


def test_the_readmes_example_runs_as_written():
    require_kvm()
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    start = readme.index("```python\n", readme.index("## From Python")) + len("```python\n")
    code = readme[start:readme.index("```", start)]
    assert "Guest(args=" in code
    exec(compile(code, "README example", "exec"), {})
