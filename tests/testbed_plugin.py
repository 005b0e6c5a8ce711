"""pytest plugin: run kvm-marked tests where a usable KVM is.

Markers:
  kvm      the test needs a KVM that can run 32-bit paged guests
  testbed  the test exercises the testbed itself (boots QEMU; slow)
  once     the launcher under load or over time, not a Host path: CI runs
           it in its first pass only, not again with the fast paths off

Where kvm tests run, decided once per session:
  LGUEST_TESTBED=1     inside the testbed (launcher/testbed.py)
  LGUEST_TESTBED=0     natively
  LGUEST_IN_TESTBED    set (we *are* inside the testbed): natively
  otherwise            natively if launcher.kvm.probe() says the host's KVM
                       is usable, else inside the testbed

Inside the testbed means: at the first kvm item, ONE VM boots and runs
``python -m pytest <every selected kvm node id>``; that inner pytest (this
plugin again, in "inner" mode because LGUEST_IN_TESTBED and
LGUEST_TESTBED_RESULTS are set) writes each test's reports to a JSON file
under /tmp. While the VM runs, the outer session prints one line per test
as it finishes in there ("testbed [12/130] PASSED tests/x.py::test_y
(3.1 s)"), read from that file; afterwards it replays the reports item by
item, so results, tracebacks and -ra summaries look as if the tests had run
here. The VM's own output goes to a log file, printed (tail) only on
failure, or live with -v. LGUEST_TESTBED_TIMEOUT (seconds) bounds the VM's
run.

When the testbed cannot run (not prepared, no qemu) kvm tests skip with the
reason -- or fail, when CI is set: CI must never skip them silently.

conftest.py imports the hooks from here (pytest_plugins is not allowed in a
non-root conftest).
"""
from __future__ import annotations

import json
import os
from contextlib import nullcontext
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Optional

import pytest

RESULTS_ENV = "LGUEST_TESTBED_RESULTS"
TIMEOUT_ENV = "LGUEST_TESTBED_TIMEOUT"


# ----------------------------------------------------------- the decision

def _host_kvm() -> tuple[bool, str]:
    """(usable, reason) from launcher.kvm.probe, imported only when needed."""
    try:
        from launcher.kvm import probe
        result = probe()
    except Exception as exc:  # the shim not built, no /dev/kvm, ...
        return False, f"cannot probe the host's KVM ({type(exc).__name__}: {exc})"
    return bool(result.usable), str(result.reason)


def decide_where(environ: dict[str, str], host_kvm=_host_kvm) -> tuple[str, str]:
    """("native" | "testbed", why). Pure, for the unit tests."""
    forced = environ.get("LGUEST_TESTBED")
    if environ.get("LGUEST_IN_TESTBED"):
        return "native", "inside the testbed"   # never nest, whatever is forced
    if forced == "1":
        return "testbed", "LGUEST_TESTBED=1"
    if forced == "0":
        return "native", "LGUEST_TESTBED=0"
    usable, reason = host_kvm()
    if usable:
        return "native", "the host's KVM can run 32-bit paged guests"
    return "testbed", reason


def _testbed_unavailable() -> Optional[str]:
    try:
        from launcher import testbed
    except Exception as exc:
        return f"cannot import launcher.testbed ({exc})"
    return testbed.available()


# ----------------------------------------------------------- session state

class _Outer:
    """What the outer session knows about its kvm items."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.where: Optional[str] = None       # decided at the first kvm item
        self.why = ""
        self.unavailable: Optional[str] = None
        self.ran = False
        self.results: dict[str, dict] = {}
        self.status: Optional[int] = None
        self.log_path = ""
        self.counts = {"passed": 0, "failed": 0, "skipped": 0}
        self.kvm_seen = 0

    def decide(self) -> None:
        if self.where is None:
            self.where, self.why = decide_where(dict(os.environ))
            if self.where == "testbed":
                self.unavailable = _testbed_unavailable()

    def run_batch(self, session: pytest.Session) -> None:
        """Boot the testbed once for every selected kvm item."""
        if self.ran:
            return
        self.ran = True
        from launcher import testbed
        nodeids = [i.nodeid for i in session.items if i.get_closest_marker("kvm")]
        fd, results = tempfile.mkstemp(prefix="lguest-testbed-results-", suffix=".json",
                                       dir="/tmp")  # /tmp: shared with the VM
        os.close(fd)
        fd, self.log_path = tempfile.mkstemp(prefix="lguest-testbed-output-", suffix=".log")
        os.close(fd)
        verbose = self.config.getoption("verbose") > 0
        argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                "-v" if verbose else "-q", *nodeids]
        timeout = os.environ.get(TIMEOUT_ENV)
        capman = self.config.pluginmanager.getplugin("capturemanager")
        tr = self.config.pluginmanager.getplugin("terminalreporter")
        started = time.monotonic()
        try:
            with capman.global_and_fixture_disabled() if capman else nullcontext(), \
                    open(self.log_path, "wb") as log:
                if tr:
                    if getattr(tr._tw, "width_of_current_line", 0):
                        tr.write("\n")   # after a line of progress dots
                    tr.write_line(f"testbed: booting a VM for {len(nodeids)} kvm test(s) "
                                  f"({self.why})", bold=True)
                    tr.flush()
                sink = _Tee(log, sys.stdout.buffer if verbose else None)
                # With -v the inner pytest's own lines stream already.
                progress = None if verbose or not tr else _Progress(results, len(nodeids),
                                                                    _line_now(tr))
                try:
                    self.status = testbed.run(
                        argv, cwd=str(self.config.rootpath), stdout=sink, stderr=sink,
                        stdin=subprocess.DEVNULL, timeout=float(timeout) if timeout else None,
                        extra_env={RESULTS_ENV: results, "LGUEST_TESTBED": "0"})
                finally:
                    if progress is not None:
                        progress.stop()
            self.results = _load_results(results)
        except Exception as exc:  # TestbedError and friends: report, do not crash
            self.status = None
            with open(self.log_path, "ab") as log:
                log.write(f"\ntestbed: {type(exc).__name__}: {exc}\n".encode())
        finally:
            os.unlink(results)
        if tr and verbose:
            tr.write_line(f"testbed: VM finished in {time.monotonic() - started:.1f} s "
                          f"(status {self.status})")

    def tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            return "(no testbed output)"
        return "\n".join(text.rstrip().splitlines()[-lines:])


def _line_now(tr: Any):
    """write_line, flushed: a pipe (CI's log) would otherwise hold the
    lines back until its buffer fills."""
    def write(line: str) -> None:
        tr.write_line(line)
        tr.flush()
    return write


class _Progress:
    """Prints a line for each test as it finishes inside the testbed.

    The inner session rewrites the results file atomically after every
    report; a test is finished once its teardown report is there. Polled
    from a thread while the main one waits for the VM.
    """

    POLL_S = 2.0

    def __init__(self, path: str, total: int, write_line) -> None:
        self.path, self.total, self.write_line = path, total, write_line
        self.done: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.POLL_S):
            self.poll()

    def poll(self) -> None:
        for nodeid, entry in _load_results(self.path).items():
            if nodeid in self.done or not any(r.get("when") == "teardown"
                                               for r in entry.get("reports", [])):
                continue
            self.done.add(nodeid)
            self.write_line(f"testbed [{len(self.done)}/{self.total}] "
                            f"{entry.get('outcome', 'passed').upper()} {nodeid} "
                            f"({entry.get('duration', 0.0):.1f} s)")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.poll()              # the last ones, written just before the VM ended


class _Tee:
    """A binary sink writing to a file and, optionally, to the terminal."""

    def __init__(self, *sinks: Any) -> None:
        self.sinks = [s for s in sinks if s is not None]

    def write(self, data: bytes) -> int:
        for s in self.sinks:
            s.write(data)
        return len(data)

    def flush(self) -> None:
        for s in self.sinks:
            s.flush()


def _load_results(path: str) -> dict[str, dict]:
    try:
        with open(path) as f:
            return json.load(f).get("tests", {})
    except (OSError, ValueError):
        return {}


def _outer(config: pytest.Config) -> _Outer:
    if not hasattr(config, "_lguest_testbed"):
        config._lguest_testbed = _Outer(config)  # type: ignore[attr-defined]
    return config._lguest_testbed  # type: ignore[attr-defined]


def _inner_results_path() -> Optional[str]:
    if os.environ.get("LGUEST_IN_TESTBED"):
        return os.environ.get(RESULTS_ENV)
    return None


# ------------------------------------------------------------------- hooks

# pytest_runtest_logreport gets no config; the inner session's is kept here.
_inner_config: list[pytest.Config] = []


def pytest_configure(config: pytest.Config) -> None:
    if _inner_results_path():
        _inner_config[:] = [config]
    config.addinivalue_line(
        "markers", "kvm: needs a KVM that can run 32-bit paged guests "
        "(runs inside the testbed VM when the host's KVM cannot)")
    config.addinivalue_line(
        "markers", "testbed: tests of the testbed itself (boot QEMU; slow)")
    config.addinivalue_line(
        "markers", "once: load and soak; CI's reference pass (fast paths off) leaves it out")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: Optional[pytest.Item]) -> Optional[bool]:
    if not item.get_closest_marker("kvm") or _inner_results_path():
        return None
    outer = _outer(item.config)
    outer.decide()
    if outer.where == "native":
        return None
    outer.kvm_seen += 1
    if outer.unavailable:
        reports = [_synthetic(item, "skipped" if not os.environ.get("CI") else "failed",
                              _unavailable_text(outer.unavailable))]
    else:
        outer.run_batch(item.session)
        reports = _replayed(item, outer)
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for rep in reports:
        item.ihook.pytest_runtest_logreport(report=rep)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    outer.counts[_outcome(reports)] += 1
    # A local test before this one left its directory and module set up for
    # us (its teardown stops at what we share); tear down what the next item
    # does not need, as pytest's own protocol would have.
    item.session._setupstate.teardown_exact(nextitem)
    return True


def _unavailable_text(reason: str) -> str:
    if os.environ.get("CI"):
        return f"kvm tests must run in CI, but the testbed cannot: {reason}"
    return reason


def _replayed(item: pytest.Item, outer: _Outer) -> list[pytest.TestReport]:
    """The inner reports for this item, or one failure saying why there are none."""
    entry = outer.results.get(item.nodeid)
    if entry and entry.get("reports"):
        return [_from_json(item.config, d) for d in entry["reports"]]
    text = (f"the testbed produced no result for this test "
            f"(testbed exit status {outer.status}); output tail ({outer.log_path}):\n"
            f"{outer.tail()}")
    return [_synthetic(item, "failed", text)]


def _from_json(config: pytest.Config, data: dict) -> pytest.TestReport:
    rep = config.hook.pytest_report_from_serializable(config=config, data=data)
    # JSON has no tuples; pytest wants a skip's longrepr and every location
    # to be one.
    rep.location = tuple(rep.location)
    if isinstance(rep.longrepr, list):
        rep.longrepr = tuple(rep.longrepr)
    return rep


def _synthetic(item: pytest.Item, outcome: str, text: str) -> pytest.TestReport:
    """The one report of a test we did not run: skipped, or failed with text."""
    longrepr: Any = text
    when = "call"                 # a failure, not an error at setup
    if outcome == "skipped":
        # Skips happen at setup and carry (path, line, reason), so -ra
        # prints them as usual.
        path, lineno, _ = item.location
        longrepr = (str(path), (lineno or 0) + 1, f"Skipped: {text}")
        when = "setup"
    return pytest.TestReport(item.nodeid, item.location,
                             {k: 1 for k in item.keywords}, outcome, longrepr, when)


def _outcome(reports: list[pytest.TestReport]) -> str:
    if any(r.failed for r in reports):
        return "failed"
    if any(r.skipped for r in reports):
        return "skipped"
    return "passed"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Inner mode: append this report to the results file, atomically."""
    path = _inner_results_path()
    if not path or not _inner_config:
        return
    config = _inner_config[0]
    data = _load_all(path)
    entry = data["tests"].setdefault(report.nodeid, {
        "outcome": "passed", "longrepr": "", "duration": 0.0, "reports": []})
    entry["reports"].append(config.hook.pytest_report_to_serializable(config=config, report=report))
    entry["duration"] += report.duration
    if report.failed or (report.skipped and entry["outcome"] == "passed"):
        entry["outcome"] = "failed" if report.failed else "skipped"
        entry["longrepr"] = _longrepr_text(report)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _load_all(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        if isinstance(data, dict) and "tests" in data:
            return data
    except (OSError, ValueError):
        pass
    return {"tests": {}}


def _longrepr_text(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    return report.longreprtext


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _inner_results_path() or not hasattr(config, "_lguest_testbed"):
        return
    outer = _outer(config)
    tr = terminalreporter
    if outer.where == "native":
        tr.write_line(f"kvm tests ran natively ({outer.why})")
        return
    if not outer.kvm_seen:
        return
    c = outer.counts
    if outer.unavailable:
        tr.write_line(f"testbed: {outer.kvm_seen} kvm tests not run: {outer.unavailable}")
        return
    tr.write_line(f"testbed: {outer.kvm_seen} kvm tests ran inside the testbed "
                  f"({c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped)")
    if c["failed"] or outer.status != 0:
        tr.write_sep("-", f"testbed output (tail of {outer.log_path})")
        tr.write_line(outer.tail())
    elif outer.log_path:
        os.unlink(outer.log_path)   # kept only when something went wrong
