"""The lguest Host, in Python: one module per duty, as drivers/lguest had.

- ``core``        the exit loop: run, decode, dispatch, kill, resume
- ``hypercalls``  LHCALL_* numbers and the dispatch table
- ``traps``       the guest's IDT, the real IDT's direct traps, delivering a
                  trap or interrupt into the guest (docs/abi.md §6)
- ``segments``    the GDT and TLS entries (docs/abi.md §2)
- ``boottables``  the page tables a Linux 2.6 guest boots on (docs/abi.md §1.5)
- ``vmcall``      how a Linux 2.6.30-2.6.39 guest's `vmcall` reaches us

Read ``core`` first.
"""
from .core import Host, Outcome  # noqa: F401
