"""LGUEST_FAST_PATHS (launcher/fastpaths.py): one switch for every fast
path's default, on the command line and in GuestConfig alike."""
import pytest

from launcher import fastpaths
from launcher.cli import build_parser
from launcher.run import GuestConfig


@pytest.mark.parametrize("value,on", [(None, True), ("on", True), ("off", False),
                                      ("OFF", False), ("0", False), ("no", False),
                                      ("1", True)])
def test_the_switch(monkeypatch, value, on):
    if value is None:
        monkeypatch.delenv(fastpaths.ENV, raising=False)
    else:
        monkeypatch.setenv(fastpaths.ENV, value)
    assert fastpaths.fast_paths_default() is on
    assert fastpaths.choose(None) is on
    assert fastpaths.choose(True) is True and fastpaths.choose(False) is False
    args = build_parser().parse_args([])
    assert (args.fast_traps, args.fast_clock, args.ioeventfd) == (on, on, on)
    config = GuestConfig()
    assert (config.fast_traps, config.fast_clock, config.ioeventfd) == (on, on, on)


def test_an_option_turns_one_path_off(monkeypatch):
    monkeypatch.delenv(fastpaths.ENV, raising=False)
    args = build_parser().parse_args(["--no-fast-clock"])
    assert (args.fast_traps, args.fast_clock, args.ioeventfd) == (True, False, True)
