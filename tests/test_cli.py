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


@pytest.mark.parametrize("argv,message", [
    (["--mem", "64X"], "cannot understand the size"),
    (["--mem", "1M"], "out of range"),
    (["--mem", "8G"], "out of range"),
    (["/no/such/kernel"], "no such file"),
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
