"""Test-suite wiring: the kvm/testbed markers and where kvm tests run.

The logic lives in testbed_plugin.py (read its docstring). It is imported
here hook by hook because pytest_plugins is only allowed in the rootdir's
conftest, and tests/ is not the rootdir.
"""
import os

# Tests that need root make loop devices and namespaces with tools that live
# in sbin (losetup, ip): find them even when PATH has only /usr/bin, as a
# user's might. (Also inside the testbed, which gets this PATH.)
_path = os.environ.get("PATH", "").split(os.pathsep)
os.environ["PATH"] = os.pathsep.join(
    _path + [d for d in ("/usr/local/sbin", "/usr/sbin", "/sbin") if d not in _path])

from testbed_plugin import (  # noqa: E402,F401  (pytest finds hooks by name)
    pytest_configure,
    pytest_runtest_logreport,
    pytest_runtest_protocol,
    pytest_terminal_summary,
)
