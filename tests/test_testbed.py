"""The testbed (launcher/testbed.py) and its pytest plugin.

Pure-logic tests first (no VM). The ``testbed``-marked tests boot the VM,
twice in all: once through scripts/testbed (streams, exit status), once
through run() (argv, stdin, shared /tmp, /dev/kvm with SVM inside).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from launcher import testbed
from testbed_plugin import _Progress, decide_where

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Arguments that naive joining or word splitting would mangle.
AWKWARD_ARGS = ["a b", "", "it's", '"double"', "$HOME", "`id`", "x\ny", "\\n", "*", " lead"]


# ------------------------------------------------------------ no VM needed

def test_argv_paths_finds_bare_and_option_paths():
    args = ["-q", "/a/b.py", "--out=/c/d.json", "-o=/e", "rel/x", "--flag", "x=/no"]
    assert testbed.argv_paths(args) == ["/a/b.py", "/c/d.json", "/e"]


def _plan(argv, cwd, dirs):
    return testbed.plan_shares(argv, cwd, isdir=lambda p: p in dirs, realpath=lambda p: p)


def test_plan_shares_tmp_cwd_and_argv_parents_shortest_first():
    dirs = {"/tmp", "/work/repo", "/data/out", "/data/out/deep", "/srv"}
    argv = ["/usr/bin/python3", "/data/out/deep/new.json", "--log=/srv/x.log", "/srv/y"]
    assert _plan(argv, "/work/repo", dirs) == ["/srv", "/tmp", "/work/repo", "/data/out/deep"]


def test_plan_shares_drops_nested_root_virtual_and_missing_dirs():
    dirs = {"/tmp", "/tmp/a", "/", "/proc/self", "/dev", "/work/repo", "/work/repo/tests"}
    argv = ["prog", "/tmp/a/f", "/x", "/proc/self/fd", "/dev/null",
            "/work/repo/tests/test_x.py::test_y[a b]", "/missing/dir/file"]
    assert _plan(argv, "/work/repo", dirs) == ["/tmp", "/work/repo"]


def test_plan_shares_ignores_the_program_itself():
    dirs = {"/tmp", "/opt/tools", "/w"}
    assert _plan(["/opt/tools/prog"], "/w", dirs) == ["/w", "/tmp"]


def test_guest_env_passes_only_what_it_should():
    env = testbed.guest_env({"PATH": "/bin", "LGUEST_X": "1", "SECRET": "no", "CI": "true"},
                            {"EXTRA": "y"})
    assert env["PATH"] == "/bin" and env["LGUEST_X"] == "1" and env["CI"] == "true"
    assert env["EXTRA"] == "y" and env["LGUEST_IN_TESTBED"] == "1"
    assert env["PYTHONUNBUFFERED"] == "1" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert "SECRET" not in env


def test_run_script_preserves_argv_exactly(tmp_path):
    # The script the VM runs is plain POSIX sh: run it here and compare.
    code = "import json, os, sys; print(json.dumps([os.getcwd(), sys.argv[1:], os.environ['K']]))"
    script = testbed.run_script([sys.executable, "-c", code, *AWKWARD_ARGS], str(tmp_path),
                                {"K": "v'\"$x", "PATH": os.environ["PATH"]})
    (tmp_path / "run.sh").write_text(script)
    out = subprocess.run(["env", "-i", "/bin/sh", str(tmp_path / "run.sh")],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [str(tmp_path), AWKWARD_ARGS, "v'\"$x"]


def test_mounts_script_quotes_paths():
    assert testbed.mounts_script(["/tmp", "/a b/it's"]) == \
        "share s0 /tmp\nshare s1 '/a b/it'\"'\"'s'\n"


def test_module_depends_reads_modinfo():
    image = b"\x7fELF junk\x00license=GPL\x00depends=kvm,ccp\x00vermagic=6.1\x00"
    assert testbed.module_depends(image) == ["kvm", "ccp"]
    assert testbed.module_depends(b"\x00depends=\x00") == []


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio(1) not installed")
def test_initramfs_is_a_cpio_that_cpio_can_list(tmp_path):
    archive = testbed.build_initramfs("#!/bin/sh\n", b"BB", {"m": b"\x7fELF"}, ["m"])
    (tmp_path / "a.cpio").write_bytes(archive)
    listing = subprocess.run(["cpio", "-it", "--quiet"], stdin=open(tmp_path / "a.cpio", "rb"),
                             capture_output=True, text=True, check=True).stdout.split()
    assert {"init", "bin/busybox", "dev/console", "mod/m.ko", "mod/order"} <= set(listing)


def test_decide_where():
    usable = lambda: (True, "fine")      # noqa: E731
    unusable = lambda: (False, "PVM")    # noqa: E731
    assert decide_where({}, usable)[0] == "native"
    assert decide_where({}, unusable) == ("testbed", "PVM")
    assert decide_where({"LGUEST_TESTBED": "1"}, usable)[0] == "testbed"
    assert decide_where({"LGUEST_TESTBED": "0"}, unusable)[0] == "native"
    # Inside the testbed, never nest, even if the outer environment forced it.
    assert decide_where({"LGUEST_IN_TESTBED": "1", "LGUEST_TESTBED": "1"}, unusable)[0] == "native"


DEBIAN_DEPENDS = {
    "linux-image-amd64": "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n",
    "linux-image-6.1.0-57-amd64": "linux-image-6.1.0-57-amd64\n  Depends: kmod\n"
                                  "  Depends: linux-base\n",
}
UBUNTU_DEPENDS = {
    "linux-image-generic": "linux-image-generic\n"
                           "  Depends: linux-image-6.8.0-49-generic\n"
                           "  Depends: linux-modules-extra-6.8.0-49-generic\n"
                           "  Depends: linux-firmware\n",
    "linux-image-6.8.0-49-generic": "linux-image-6.8.0-49-generic\n"
                                    "  Depends: linux-modules-6.8.0-49-generic\n"
                                    " |Depends: linux-image-6.8.0-49-generic-cloud\n",
    "linux-modules-6.8.0-49-generic": "linux-modules-6.8.0-49-generic\n  Depends: kmod\n",
    "linux-modules-extra-6.8.0-49-generic": "x\n  Depends: linux-modules-6.8.0-49-generic\n",
}


def test_kernel_parts_debian_and_ubuntu():
    assert testbed.kernel_parts(DEBIAN_DEPENDS.get) == (
        "linux-image-amd64", ["linux-image-6.1.0-57-amd64"])
    # Ubuntu: the image, its modules, and the extra modules (9p lives in
    # one of them depending on the release); never the cloud flavour.
    meta, parts = testbed.kernel_parts(UBUNTU_DEPENDS.get)
    assert meta == "linux-image-generic"
    assert sorted(parts) == ["linux-image-6.8.0-49-generic", "linux-modules-6.8.0-49-generic",
                             "linux-modules-extra-6.8.0-49-generic"]
    with pytest.raises(testbed.TestbedError, match="cannot find a kernel package"):
        testbed.kernel_parts({}.get)


def test_progress_prints_each_test_once_when_its_teardown_is_in(tmp_path):
    path = tmp_path / "results.json"
    lines: list[str] = []
    progress = _Progress(str(path), 3, lines.append)
    progress.stop()                    # no file yet: nothing, and no error
    assert lines == []

    def write(tests):
        path.write_text(json.dumps({"tests": tests}))

    running = {"outcome": "passed", "duration": 1.0, "reports": [{"when": "setup"},
                                                                  {"when": "call"}]}
    done = dict(running, reports=running["reports"] + [{"when": "teardown"}])
    write({"t.py::a": done, "t.py::b": running})
    progress.poll()
    write({"t.py::a": done, "t.py::b": dict(done, outcome="failed", duration=2.25)})
    progress.poll()
    progress.poll()
    assert lines == ["testbed [1/3] PASSED t.py::a (1.0 s)",
                     "testbed [2/3] FAILED t.py::b (2.2 s)"]


# ------------------------------------------------------------ booting the VM

@pytest.fixture
def need_testbed():
    if os.environ.get("LGUEST_IN_TESTBED"):
        pytest.skip("already inside the testbed")
    why = testbed.available()
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"testbed tests must run in CI, but {why}")
        pytest.skip(why)


@pytest.mark.testbed
def test_streams_and_exit_status(need_testbed):
    r = subprocess.run([os.path.join(REPO, "scripts", "testbed"), "--timeout", "300", "--",
                        "sh", "-c", "echo out; echo err >&2; exit 3"],
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert (r.stdout, r.stderr, r.returncode) == ("out\n", "err\n", 3)


INSIDE = r"""
import json, os, subprocess, sys
out, args = sys.argv[1], sys.argv[2:]
svm = subprocess.run(["grep", "-c", "svm", "/proc/cpuinfo"], capture_output=True, text=True)
with open(out, "w") as f:
    json.dump({"args": args, "stdin": sys.stdin.read(), "kvm": os.path.exists("/dev/kvm"),
               "svm": int(svm.stdout or 0), "flag": os.environ.get("LGUEST_IN_TESTBED"),
               "extra": os.environ.get("EXTRA")}, f)
print("done")
"""


@pytest.mark.testbed
def test_argv_stdin_shared_tmp_and_kvm_inside(need_testbed):
    work = tempfile.mkdtemp(dir="/tmp")   # /tmp is shared writable with the VM
    try:
        result = os.path.join(work, "result.json")   # created inside, read here
        stdin = os.path.join(work, "stdin")
        with open(stdin, "wb") as f:
            f.write(b"line 1\nline 2\n")
        out, err = io.BytesIO(), io.BytesIO()
        with open(stdin, "rb") as f:
            status = testbed.run([sys.executable, "-c", INSIDE, result, *AWKWARD_ARGS],
                                 timeout=300, stdin=f.fileno(), stdout=out, stderr=err,
                                 extra_env={"EXTRA": "x y"})
        assert (status, out.getvalue()) == (0, b"done\n"), err.getvalue().decode()
        with open(result) as f:
            seen = json.load(f)
        assert seen["args"] == AWKWARD_ARGS
        assert seen["stdin"] == "line 1\nline 2\n"
        assert seen["flag"] == "1" and seen["extra"] == "x y"
        assert seen["kvm"], "no /dev/kvm inside the testbed"
        assert seen["svm"] > 0, "the emulated CPU shows no svm flag"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_a_cache_from_an_older_module_list_is_out_of_date(tmp_path, monkeypatch):
    monkeypatch.setenv("LGUEST_TESTBED_CACHE", str(tmp_path))
    monkeypatch.setattr(testbed.shutil, "which", lambda name: "/usr/bin/" + name)
    assert "not prepared" in testbed.available()
    (tmp_path / "kernel.json").write_text(json.dumps(
        {"format": testbed.CACHE_FORMAT, "wanted": ["kvm-amd"], "order": [], "boot": "vmlinuz"}))
    assert testbed.available() == (f"the testbed in {tmp_path} is out of date (it needs other "
                                   f"modules): {testbed.INSTALL_HINT}")


def test_the_monitor_is_off_unless_a_socket_is_asked_for(monkeypatch):
    def monitor(argv):
        return argv[argv.index("-monitor") + 1]
    args = dict(mem_mb=512, job="j", shares=[], port_chardevs={n: "null,id=" + n for n in testbed.PORTS},
                console="/tmp/c.log")
    paths = testbed.CachePaths("/nonexistent")
    monkeypatch.delenv("LGUEST_TESTBED_MONITOR", raising=False)
    assert monitor(testbed.qemu_argv(paths, "k", **args)) == "none"
    monkeypatch.setenv("LGUEST_TESTBED_MONITOR", "/tmp/a,b.sock")
    assert monitor(testbed.qemu_argv(paths, "k", **args)) == "unix:/tmp/a,,b.sock,server,nowait"
