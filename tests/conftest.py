"""Test-suite wiring: the kvm/testbed markers and where kvm tests run.

The logic lives in testbed_plugin.py (read its docstring). It is imported
here hook by hook because pytest_plugins is only allowed in the rootdir's
conftest, and tests/ is not the rootdir.
"""
from testbed_plugin import (  # noqa: F401  (pytest finds hooks by name)
    pytest_configure,
    pytest_runtest_logreport,
    pytest_runtest_protocol,
    pytest_terminal_summary,
)
