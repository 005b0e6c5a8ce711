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
    monkeypatch.delenv(fastpaths.CLOCK_ENV, raising=False)
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
    # LGUEST_FAST_CLOCK=off turns the clock alone off; it cannot turn it on
    # when every fast path is off.
    monkeypatch.setenv(fastpaths.CLOCK_ENV, "off")
    assert build_parser().parse_args([]).fast_clock is False
    assert GuestConfig().fast_clock is False
    assert build_parser().parse_args([]).fast_traps is on
    monkeypatch.setenv(fastpaths.CLOCK_ENV, "on")
    assert GuestConfig().fast_clock is on


def test_an_option_turns_one_path_off_or_on(monkeypatch):
    monkeypatch.delenv(fastpaths.ENV, raising=False)
    monkeypatch.delenv(fastpaths.CLOCK_ENV, raising=False)
    args = build_parser().parse_args(["--no-fast-clock"])
    assert (args.fast_traps, args.fast_clock, args.ioeventfd) == (True, False, True)
    monkeypatch.setenv(fastpaths.CLOCK_ENV, "off")
    assert build_parser().parse_args(["--fast-clock"]).fast_clock is True
