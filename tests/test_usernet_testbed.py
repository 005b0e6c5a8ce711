"""--net user where the guest runs inside the testbed: passt runs on this
host, the testbed VM's network card carries the frames and is bridged to
the guest's tap. Run from outside the testbed, by the launcher's own
decision, with a real kernel (LGUEST_TEST_KERNELS, as tests/test_linux_kvm.py).

Where this host's KVM runs guests itself there is no testbed in the way:
tests/test_linux_kvm.py covers --net user there."""
from __future__ import annotations

import os
import socket

import pytest

from kvm_support import initrd_for
from launcher.api import Guest
from usernet_dialogue import GUEST_PORT, serve, talk

pytestmark = pytest.mark.testbed

KERNELS = [k for k in os.environ.get("LGUEST_TEST_KERNELS", "").split(":") if k]
INITRD = os.environ.get("LGUEST_TEST_INITRD")
BOOT_TIMEOUT = float(os.environ.get("LGUEST_TEST_BOOT_TIMEOUT", "300"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=KERNELS[:1] or [None], ids=[os.path.basename(k) for k in KERNELS[:1]]
                or ["none"])
def kernel(request):
    if request.param is None or not INITRD:
        pytest.skip("set LGUEST_TEST_KERNELS and LGUEST_TEST_INITRD to test real kernels")
    if os.environ.get("LGUEST_IN_TESTBED"):
        pytest.skip("already inside the testbed")
    from launcher import testbed
    from launcher.kvm import probe
    if probe().usable:
        pytest.skip("this host's KVM runs the guest itself: no testbed in the way")
    why = testbed.available()
    if why:
        pytest.fail(why) if os.environ.get("CI") else pytest.skip(why)
    return request.param


def test_user_networking_reaches_this_host_from_inside_the_testbed(kernel, tmp_path):
    (tmp_path / "page.txt").write_text("served-by-the-host-side\n")
    page, forward = free_port(), free_port()
    server = serve(str(tmp_path), page)
    try:
        with Guest(kernel, mem="128M", initrd=initrd_for(kernel), args=["console=hvc0"],
                   net=[f"user,hostfwd=tcp:127.0.0.1:{forward}-:{GUEST_PORT}"],
                   timeout=BOOT_TIMEOUT + 300) as g:
            talk(g, BOOT_TIMEOUT, page, forward)
    finally:
        server.kill()
        server.wait()
