"""The --net user conversation with a real Linux guest, shared by the test
run where the guest runs (tests/test_linux_kvm.py, passt beside it) and the
one from outside the testbed (tests/test_usernet_testbed.py, passt on this
host, the testbed VM's card bridged to the guest).

The guest needs only busybox: udhcpc with an event script the dialogue
writes, wget, httpd."""
from __future__ import annotations

import subprocess
import sys
from typing import Sequence

GUEST_PORT = 8080
DHCP_SCRIPT = ("printf '#!/bin/sh\\n[ \"$1\" = bound ] && ip addr add $ip/$mask dev $interface && "
               "ip route add default via $router\\nexit 0\\n' > /tmp/dhcp && chmod +x /tmp/dhcp")
CLIENT = """import socket, sys
c = socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=60)
c.sendall(b'GET /g.txt HTTP/1.0\\r\\n\\r\\n')
data = b''
while chunk := c.recv(4096):
    data += chunk
print(data.decode(errors='replace'))
"""


def serve(directory: str, port: int, prefix: Sequence[str] = ()) -> subprocess.Popen:
    """An HTTP server on 127.0.0.1:port on the launcher's side, serving
    page.txt (which the caller wrote)."""
    return subprocess.Popen([*prefix, sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1", "--directory", directory],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def talk(g, boot_timeout: float, page_port: int, forward_port: int,
         prefix: Sequence[str] = ()) -> None:
    """DHCP, a page fetched from the launcher's side through the gateway, a
    page served from the guest through hostfwd (forward_port -> GUEST_PORT),
    power off. ``prefix`` runs the host-side client (ip netns exec NS)."""
    g.expect(r"# ", timeout=boot_timeout)
    g.send(f"{DHCP_SCRIPT}; ip link set eth0 up; udhcpc -i eth0 -n -q -t 5 -T 3 "
           "-s /tmp/dhcp; ip -4 addr show eth0; ip route; echo :dh''cp\n")
    m = g.expect(r"inet (\S+)(?s:.*?)default via (\S+)(?s:.*?):dhcp", timeout=120)
    assert (m.group(1), m.group(2)) == ("10.0.2.15/24", "10.0.2.2"), g.transcript[-1500:]
    g.send(f"wget -q -O - http://10.0.2.2:{page_port}/page.txt; echo :g''ot\n")
    g.expect(r"served-by-the-host-side\s+:got", timeout=120)
    g.send(f"mkdir -p /www && echo served-by-the-guest > /www/g.txt && "
           f"httpd -p {GUEST_PORT} -h /www && echo :ser''ving\n")
    g.expect(r":serving", timeout=60)
    got = subprocess.run([*prefix, sys.executable, "-c", CLIENT, str(forward_port)],
                         capture_output=True, text=True, timeout=180)
    assert "served-by-the-guest" in got.stdout, (got.stdout, got.stderr, g.transcript[-1500:])
    g.send("poweroff -f\n")
    assert g.wait(timeout=120).status == 0
