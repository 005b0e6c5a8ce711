"""Real Linux lguest guests (G0: Linux 2.6.23, DMA devices; G1: 2.6.24-2.6.39
and G2: 3.x, lguest bus; G3: 4.1-4.13, virtio over PCI), end to end: the
same tests for every kernel given.

Kernels are not part of the project: build them yourself (README, "Guest
kernels") and point the tests at them:

    LGUEST_TEST_KERNELS=/path/bzImage-3.14-nopae:/path/bzImage-3.14-pae \\
    LGUEST_TEST_INITRD=/path/initramfs.cpio.gz  python3 -m pytest tests/test_linux_kvm.py

The initramfs must print "userspace up" and start a shell on the virtio
console (/dev/hvc0; late 4.x stable kernels number it /dev/hvc1), and power
off when the shell exits. Linux 2.6 kernels (G1) take the initramfs in
LGUEST_TEST_INITRD_2_6 if it is set: a glibc-linked busybox refuses kernels
older than 3.2, and kernels before 2.6.32 have no devtmpfs (README, "Guest
kernels"). Without the variables these tests skip.
"""
from __future__ import annotations

import os
import re

import pytest

from kvm_support import initrd_for, kernel_release, require_kvm
from launcher.api import Guest

pytestmark = pytest.mark.kvm

KERNELS = [k for k in os.environ.get("LGUEST_TEST_KERNELS", "").split(":") if k]
INITRD = os.environ.get("LGUEST_TEST_INITRD")
BOOT_TIMEOUT = float(os.environ.get("LGUEST_TEST_BOOT_TIMEOUT", "300"))
# The fork/exec workload: a G3 kernel takes ~3x the exits of a G2 one for it,
# and in the testbed every exit runs the Host's Python under emulation.
WORK_TIMEOUT = float(os.environ.get("LGUEST_TEST_WORK_TIMEOUT", "900"))


def kernel_id(path: str) -> str:
    return os.path.basename(path)


@pytest.fixture(params=KERNELS or [None], ids=[kernel_id(k) for k in KERNELS] or ["none"])
def kernel(request):
    if request.param is None or not INITRD:
        pytest.skip("set LGUEST_TEST_KERNELS and LGUEST_TEST_INITRD to test real kernels")
    require_kvm()
    return request.param


def boot(kernel: str, *extra: str, **kw) -> Guest:
    return Guest(kernel, mem="128M", initrd=initrd_for(kernel), args=["console=hvc0", *extra],
                 timeout=BOOT_TIMEOUT + WORK_TIMEOUT, **kw)


def test_boots_to_an_interactive_shell_and_powers_off(kernel):
    with boot(kernel) as g:
        g.expect(r"userspace up", timeout=BOOT_TIMEOUT)
        g.expect(r"# ", timeout=60)
        g.send("echo sum=$((6*7)); uname -r\n")
        m = g.expect(r"sum=42\s+(\S+)", timeout=60)
        assert re.match(r"\d+\.\d+", m.group(1))
        g.send("poweroff -f\n")
        result = g.wait(timeout=120)
    assert result.status == 0, result.reason


def disk_device(kernel: str) -> str:
    """The first disk's name: Linux 2.6.23's lguest_blk calls it lgba."""
    return "/dev/lgba" if kernel_release(kernel) < (2, 6, 24) else "/dev/vda"


def test_rng_block_and_data_across_boots(kernel, tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    vda = disk_device(kernel)
    # 2.6.23 has no such device: the launcher refuses --rng for it.
    with boot(kernel, block=[str(disk)], rng=kernel_release(kernel) >= (2, 6, 24)) as g:
        g.expect(r"# ", timeout=BOOT_TIMEOUT)
        # The device is offered to every kernel; Linux has a driver for it
        # from 2.6.26 (an older one boots without it).
        if kernel_release(kernel) >= (2, 6, 26):
            g.send("head -c 16 /dev/hwrng | od -An -tx1 | tr -d ' \\n'; echo :rng\n")
            m = g.expect(r"([0-9a-f]{32}):rng", timeout=60)
            assert m.group(1) != "0" * 32
        g.send(f"echo lguest-was-here | dd of={vda} bs=512 seek=3 conv=fsync 2>/dev/null;"
               " echo wrote\n")
        g.expect(r"\nwrote", timeout=60)
        g.send("poweroff -f\n")
        assert g.wait(timeout=120).status == 0
    assert disk.read_bytes()[3 * 512:3 * 512 + 15] == b"lguest-was-here"
    with boot(kernel, block=[str(disk)]) as g:
        g.expect(r"# ", timeout=BOOT_TIMEOUT)
        g.send(f"dd if={vda} bs=512 skip=3 count=1 2>/dev/null | head -c 15; echo :read\n")
        g.expect(r"lguest-was-here:read", timeout=60)
        g.send("poweroff -f\n")
        assert g.wait(timeout=120).status == 0


def test_panic_exits_1_with_the_panic_text(kernel):
    # An init that exits at once makes the kernel panic ("Attempted to kill init").
    with boot(kernel, "rdinit=/bin/false") as g:
        result = g.wait(timeout=BOOT_TIMEOUT)
    assert result.status == 1
    assert result.reason.startswith("launcher: guest crashed: Attempted to kill init")


def test_network_to_the_host_side_of_the_tap_in_a_namespace(kernel):
    import shutil
    import subprocess
    import uuid
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make a network namespace")
    ns = f"lgtest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], check=True)
        with boot(kernel, tunnet=["10.55.0.1"], wrapper=["ip", "netns", "exec", ns]) as g:
            g.expect(r"# ", timeout=BOOT_TIMEOUT)
            g.send("ip link set eth0 up && ip addr add 10.55.0.2/24 dev eth0 && "
                   "ping -c 3 -W 5 10.55.0.1 | tail -2; echo :pinged\n")
            m = g.expect(r"(\d+) packets received(?s:.*?):pinged", timeout=120)
            assert int(m.group(1)) == 3, g.transcript[-1500:]
            ping = ["ping"] if shutil.which("ping") else ["busybox", "ping"]
            back = subprocess.run(["ip", "netns", "exec", ns, *ping, "-c", "3", "-W", "5",
                                   "10.55.0.2"], capture_output=True, text=True, timeout=60)
            assert back.returncode == 0, back.stdout + back.stderr
            g.send("poweroff -f\n")
            assert g.wait(timeout=120).status == 0
    finally:
        subprocess.run(["ip", "netns", "del", ns])


def test_user_networking_through_passt_in_a_namespace(kernel, tmp_path):
    """--net user: the guest takes its address by DHCP, fetches a page from an
    HTTP server on the launcher's side (the gateway is the host's loopback),
    and a client there reaches the guest's web server through hostfwd. The
    namespace gives passt an interface to model the guest's network on, and
    keeps the ports to the test."""
    import shutil
    import subprocess
    import uuid
    from usernet_dialogue import GUEST_PORT, serve, talk
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to make a network namespace")
    if shutil.which("passt") is None:
        pytest.fail("passt is not installed (scripts/install-deps installs it)")
    ns = f"lgtest-{uuid.uuid4().hex[:8]}"
    netns = ["ip", "netns", "exec", ns]
    (tmp_path / "page.txt").write_text("served-by-the-host-side\n")
    subprocess.run(["ip", "netns", "add", ns], check=True)
    server = None
    try:
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "link", "add", "uplink", "type", "veth", "peer", "name", "far"],
                    ["ip", "link", "set", "far", "up"],
                    ["ip", "addr", "add", "192.0.2.10/24", "dev", "uplink"],
                    ["ip", "link", "set", "uplink", "up"],
                    ["ip", "route", "add", "default", "via", "192.0.2.1"]):
            subprocess.run(netns + cmd, check=True)
        server = serve(str(tmp_path), 18000, netns)
        with boot(kernel, net=[f"user,hostfwd=tcp::18080-:{GUEST_PORT}"], wrapper=netns) as g:
            talk(g, BOOT_TIMEOUT, 18000, 18080, netns)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", ns])


def test_userspace_workload_and_the_clock(kernel):
    import time
    with boot(kernel) as g:
        g.expect(r"# ", timeout=BOOT_TIMEOUT)
        # fork/exec and pipes across many processes, then signals.
        g.send("i=0; while [ $i -lt 60 ]; do (echo $i | cat | wc -c > /dev/null) & "
               "i=$((i+1)); done; wait; echo forks=$i\n")
        g.expect(r"forks=60", timeout=WORK_TIMEOUT)
        # Signal the child only once it is `sleep`: a child that has not
        # exec'd yet still ignores SIGTERM as the interactive shell does.
        # (/proc/PID/stat names it in every release; /proc/PID/comm is 2.6.33+.)
        g.send("sleep 30 & p=$!; while ! grep -q '(sleep)' /proc/$p/stat; do sleep 1; "
               "done; kill -TERM $p; wait $p; echo sig=$?\n")
        g.expect(r"sig=143", timeout=120)
        # Sleeps take their time, and the guest's clock is the host's.
        # Never early, and never longer than the host saw pass (the forks of
        # `date` may take seconds when the testbed is busy).
        host_start = time.time()
        g.send("a=$(date +%s); sleep 2; b=$(date +%s); echo slept=$((b-a)) now=$b\n")
        m = g.expect(r"slept=(\d+) now=(\d+)", timeout=120)
        assert 2 <= int(m.group(1)) <= time.time() - host_start + 1
        # Set from the host's at boot; the testbed's emulated TSC drifts when
        # the machine is loaded (seen: 44 s behind after 20 busy minutes).
        assert abs(int(m.group(2)) - time.time()) < 120
        g.send("poweroff -f\n")
        assert g.wait(timeout=120).status == 0


def test_reboot_restarts_in_place(kernel):
    if kernel_release(kernel) < (2, 6, 25):
        pytest.skip("Linux 2.6.23 and 2.6.24 have no lguest restart call: their reboot "
                    "loops in the native restart code, as it did under the original Host")
    with boot(kernel) as g:
        g.expect(r"# ", timeout=BOOT_TIMEOUT)
        first = len(g.transcript)
        g.send("reboot -f\n")
        g.expect(r"userspace up", timeout=BOOT_TIMEOUT, since=first)
        g.expect(r"# ", timeout=60, since=first)      # input before the shell may be lost
        g.send("poweroff -f\n")
        result = g.wait(timeout=BOOT_TIMEOUT)
    assert result.status == 0
    assert result.transcript.count("Linux version") == 2


def test_a_terminal_gets_raw_mode_ctrl_c_reaches_the_guest_three_stop_it(kernel):
    """On a real terminal (a pty here): the launcher puts it in raw mode, a
    ^C interrupts the guest's foreground command instead of the launcher,
    three ^C within a second stop the guest, and the terminal's settings
    come back."""
    import pty
    import subprocess
    import sys
    import termios
    import time
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "--mem", "128M", "--initrd",
                             initrd_for(kernel), kernel, "console=hvc0"],
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    out = bytearray()

    def read_until(pattern: bytes, timeout: float, since: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while pattern not in out[since:]:
            assert time.monotonic() < deadline, out[-800:]
            import select
            if select.select([master], [], [], 1)[0]:
                try:
                    out.extend(os.read(master, 4096))
                except OSError:
                    break

    try:
        read_until(b"# ", BOOT_TIMEOUT)
        os.write(master, b"sleep 1000\n")
        time.sleep(3)
        mark = len(out)
        os.write(master, b"\x03")                    # one ^C: for the guest's sleep
        read_until(b"# ", 60, since=mark)            # the shell's prompt again (Linux
        assert proc.poll() is None                   # echoes "^C" from 2.6.25 on), and
                                                     # the launcher is still running
        os.write(master, b"echo alive=$((40+2))\n")   # and the shell is back
        read_until(b"alive=42", 300)                 # (a G3 guest in the testbed is slow)
        assert len(out) > mark
        for _ in range(3):                           # three: stop the guest
            os.write(master, b"\x03")
            time.sleep(0.1)
        assert proc.wait(timeout=60) == 130
        read_until(b"three ^C", 10)
        assert termios.tcgetattr(slave) == before    # the terminal came back
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
        os.close(slave)


def test_stats_and_trace_of_a_full_boot(kernel, tmp_path):
    import json
    import subprocess
    import sys
    trace = tmp_path / "trace.json"
    result = subprocess.run([sys.executable, "-m", "launcher", "--mem", "128M", "--stats",
                             "--trace", str(trace), "--initrd", initrd_for(kernel), kernel,
                             "console=hvc0", "rdinit=/bin/false"],
                            capture_output=True, text=True, timeout=BOOT_TIMEOUT,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1                       # the planned panic
    total = re.search(r"^total\s+(\d+)", result.stderr, re.M)
    assert total and int(total.group(1)) > 1000
    events = json.loads(trace.read_text())
    assert len(events) == int(total.group(1))           # one event per exit
    kinds = {e["name"] for e in events}
    assert {"LHCALL_LGUEST_INIT", "LHCALL_NEW_PGTABLE", "LHCALL_SHUTDOWN"} <= kinds
    assert all(e["ph"] == "X" and e["dur"] >= 0 for e in events)
