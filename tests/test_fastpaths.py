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
    # The clock in the VM is opt-in for now (launcher/fastpaths.py says why).
    args = build_parser().parse_args([])
    assert (args.fast_traps, args.fast_clock, args.ioeventfd) == (on, False, on)
    config = GuestConfig()
    assert (config.fast_traps, config.fast_clock, config.ioeventfd) == (on, False, on)
    monkeypatch.setenv(fastpaths.CLOCK_ENV, "on")
    assert build_parser().parse_args([]).fast_clock is on
    assert GuestConfig().fast_clock is on


def test_an_option_turns_one_path_off_or_on(monkeypatch):
    monkeypatch.delenv(fastpaths.ENV, raising=False)
    monkeypatch.setenv(fastpaths.CLOCK_ENV, "on")
    args = build_parser().parse_args(["--no-fast-clock"])
    assert (args.fast_traps, args.fast_clock, args.ioeventfd) == (True, False, True)
    monkeypatch.delenv(fastpaths.CLOCK_ENV)
    assert build_parser().parse_args(["--fast-clock"]).fast_clock is True
