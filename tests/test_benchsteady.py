"""launcher-bench's steady-state driver without a guest: the shell console
types each step at the prompt and finds its marker, and the idle window
starts only once the console has been quiet (a slow echo is not idle)."""
import os
import time

import pytest

from launcher.benchsteady import ShellConsole


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def typed(fd: int) -> bytes:
    return os.read(fd, 4096)


def test_steps_are_typed_at_the_prompt_and_end_at_their_markers(pipe):
    r, w = pipe
    console = ShellConsole([("one\n", b"one-42"), ("two\n", b"two-42")], w)
    console.write(b"boot noise\nuserspace up\n")
    assert "userspace" in console.at and console.step == 0
    console.write(b"/ # ")
    assert typed(r) == b"one\n"
    console.write(b"one\r\n")                 # the echo does not end the step
    assert console.step == 1
    console.write(b"one-4")
    console.write(b"2\r\n/ # ")                # a marker split across writes
    assert typed(r) == b"two\n"
    console.write(b"two-42\r\n")
    assert typed(r) == b"poweroff -f\n"
    assert [m for m in console.at if m.startswith("step")] == ["step0", "step1", "step2"]


def wait_for(console, mark: str, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while mark not in console.at and time.monotonic() < deadline:
        time.sleep(0.02)


def test_the_quiet_window_starts_over_at_any_output(pipe):
    r, w = pipe
    settle, seconds = 1.0, 0.5
    console = ShellConsole([("idle\n", b"idle-42")], w, quiet=(0, settle, seconds, "idle"))
    console.write(b"userspace up\n")
    console.write(b"/ # ")
    assert typed(r) == b"idle\n"
    for ch in b"idle\r\n":                     # a slow echo, a character each 0.1 s
        time.sleep(0.1)
        last = time.monotonic_ns()             # (before the write starts the timer)
        console.write(bytes([ch]))
        assert "idle_begin" not in console.at
    wait_for(console, "idle_begin")
    assert console.at["idle_begin"][1] - last >= settle * 1e9
    again = time.monotonic_ns()
    console.write(b"?")                        # output inside the window: again
    wait_for(console, "idle_end")
    begin, end = console.at["idle_begin"][1], console.at["idle_end"][1]
    assert begin - again >= settle * 1e9 and end - begin >= seconds * 1e9
    assert console.quiet_done
    console.write(b"idle-42\r\n")
    assert typed(r) == b"poweroff -f\n"


def test_a_window_never_quiet_is_not_done(pipe):
    r, w = pipe
    console = ShellConsole([("idle\n", b"idle-42")], w, quiet=(0, 0.3, 0.3, "idle"))
    console.write(b"userspace up\n")
    console.write(b"/ # ")
    console.write(b"idle-42\r\n")             # the step ended before any window
    assert not console.quiet_done and "idle_begin" not in console.at
