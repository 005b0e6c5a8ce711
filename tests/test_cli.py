import os
import re
import time

import pytest

from launcher import cli
from launcher.errors import UserError


@pytest.mark.parametrize("text,size", [("64M", 64 << 20), ("1G", 1 << 30), ("512K", 512 << 10),
                                       ("64", 64 << 20), ("128MiB", 128 << 20), ("2g", 2 << 30)])
def test_sizes(text, size):
    assert cli.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "64X", "-1", "1.5G"])
def test_bad_sizes_are_user_errors(text):
    with pytest.raises(UserError):
        cli.parse_size(text)


def test_lguest_legacy_form_puts_memory_first():
    args = cli.build_parser().parse_args(["64", "vmlinux", "root=/dev/vda"])
    cli.normalise_legacy(args)
    assert (args.mem, args.kernel, args.guest_args) == ("64", "vmlinux", ["root=/dev/vda"])


def parse(argv):
    return cli.parse_command_line(cli.build_parser(), argv)


def test_args_after_a_lone_dashdash_go_to_the_guest():
    args = parse(["--", "echo", "bench"])                 # the bundled guest
    assert args.kernel is None and args.guest_args == ["echo", "bench"]
    args = parse(["--mem", "32M", "bzImage", "console=hvc0", "--", "--not-an-option", "x"])
    assert (args.kernel, args.guest_args) == ("bzImage", ["console=hvc0", "--not-an-option", "x"])
    args = parse(["64", "vmlinux", "--", "quiet"])       # lguest's form, then more
    assert (args.mem, args.kernel, args.guest_args) == ("64", "vmlinux", ["quiet"])


def test_bundled_guest_gets_the_args(monkeypatch):
    from launcher.run import BUNDLED_GUEST
    config = cli.make_config(parse(["--", "echo"]))
    assert config.kernel == BUNDLED_GUEST and config.cmdline == "echo"


def test_net_and_tunnet_keep_command_line_order():
    args = parse(["--tunnet", "10.0.0.1", "--block", "d.img", "--net", "user,hostfwd=tcp::2-:3",
                  "--rng"])
    assert args.devices == [("tunnet", "10.0.0.1"), ("block", "d.img"),
                            ("usernet", "user,hostfwd=tcp::2-:3"), ("rng", None)]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("launcher (lguest-on-KVM) ")


def test_help_ends_with_the_exit_statuses(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: launcher [options] [KERNEL] [-- GUEST ARGS...]")
    tail = out[out.index("exit status:"):]
    for status in ("0 ", "1 ", "2 ", "3 ", "124", "130"):
        assert f"\n  {status}" in tail
    for option in ("--net", "--tunnet", "--block", "--version", "--verbose", "--timeout"):
        assert option in out


@pytest.mark.parametrize("argv,message", [
    (["--mem", "64X"], "cannot understand the size"),
    (["--mem", "1M"], "out of range"),
    (["--mem", "8G"], "out of range"),
    (["/no/such/kernel"], "no such file"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate (launcher --help lists"),
    (["--mem"], "argument --mem/-m: expected one argument"),
    (["--pae", "--no-pae"], "not allowed with argument"),
    (["--timeout", "soon"], "invalid float value"),
    (["--net", "tap"], "only `user`"),
    (["--net", "user,hostfwd=tcp::22"], "hostfwd=tcp::22 is not"),
])
def test_user_mistakes_exit_2_with_one_line(argv, message, capsys):
    assert cli.main(argv) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("launcher: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_session_closes_once_however_often_it_is_closed(tmp_path):
    """The CLI closes its session on an early return and again at the end:
    the disk's descriptor must be closed exactly once (a second close would
    hit whatever file has taken its number since)."""
    import os
    from launcher.run import GuestConfig, Session
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(4096))
    session = Session(GuestConfig(devices_spec=[("block", (str(disk), False))]))
    fd = session.devices[0].fd
    session.close()
    reused = os.open(str(disk), os.O_RDONLY)       # likely takes the same number
    try:
        session.close()
        os.fstat(reused)                            # still open
    finally:
        os.close(reused)
    assert fd >= 0


def test_tunnet_is_refused_when_the_guest_would_run_in_the_testbed(monkeypatch, capsys):
    """A tap made inside the testbed VM is out of the host's reach: one
    sentence, exit 2, no VM booted, and no tap made on the host either."""
    from launcher import kvm, testbed
    monkeypatch.delenv("LGUEST_IN_TESTBED", raising=False)
    monkeypatch.setattr(kvm, "probe", lambda: kvm.KvmProbe(False, "/dev/kvm is a test's"))
    monkeypatch.setattr(testbed, "available", lambda: None)
    monkeypatch.setattr(testbed, "run", lambda *a, **k: pytest.fail("the testbed was booted"))
    before = set(os.listdir("/sys/class/net"))
    assert cli.main(["--tunnet", "10.0.0.1"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err == ("launcher: --tunnet cannot work here: the guest would run inside the testbed "
                   "VM, and a tap made there is out of this host's reach; use --net user\n")
    assert set(os.listdir("/sys/class/net")) == before


def test_verbose_says_where_the_guest_runs_and_what_it_boots(monkeypatch, capsys):
    from launcher import kvm, testbed
    monkeypatch.delenv("LGUEST_IN_TESTBED", raising=False)
    monkeypatch.setattr(kvm, "probe", lambda: kvm.KvmProbe(False, "/dev/kvm is a test's"))
    monkeypatch.setattr(testbed, "available", lambda: None)
    seen = {}

    def fake_run(argv, **kw):
        seen.update(kw, argv=argv)
        return 0
    monkeypatch.setattr(testbed, "run", fake_run)
    assert cli.main(["--verbose", "--timeout", "30", "--", "echo"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert re.match(r"launcher: \[\d+\.\d\d s\] /dev/kvm is a test's; running inside the "
                    r"testbed VM instead", err[0])
    assert any("booting the testbed VM" in line for line in err)
    assert re.match(r"launcher: \[\d+\.\d\d s\] the testbed VM finished \(status 0\)", err[-1])
    # The inner launcher counts --timeout from this one's start.
    assert abs(float(seen["extra_env"]["LGUEST_STARTED"]) - time.time()) < 60
    assert seen["net_fd"] is None
    assert seen["argv"][1:] == ["-m", "launcher", "--verbose", "--timeout", "30", "--", "echo"]


def test_launcher_bench_hands_over_to_the_testbed_too(monkeypatch):
    """launcher-bench shares kvm_ready: with no devices it needs no config."""
    from launcher import bench, kvm, testbed
    monkeypatch.delenv("LGUEST_IN_TESTBED", raising=False)
    monkeypatch.setattr(kvm, "probe", lambda: kvm.KvmProbe(False, "/dev/kvm is a test's"))
    monkeypatch.setattr(testbed, "available", lambda: None)
    ran = []
    monkeypatch.setattr(testbed, "run", lambda argv, **kw: ran.append(argv) or 7)
    assert bench.main(["--json", "-n", "5"]) == 7
    assert ran[0][1:] == ["-m", "launcher.bench", "--json", "-n", "5"]
