"""lguest-on-KVM: run lguest paravirtual i386 guests on KVM.

The package reads top-down, one duty per module:

- ``cli``       the ``launcher`` command (start here as a user)
- ``generations`` every difference between guest releases, one object each
- ``machine``   builds the VM: RAM, the Switcher region, the vCPU
- ``host/``     the lguest Host: exits, hypercalls, traps, interrupts ...
- ``switcher``  the in-VM Switcher's layout, read from its ELF symbols
- ``kvm``       the only module that talks to the C shim (native/)
- ``memory``    bounds-checked guest memory
- ``testbed``   runs commands inside a QEMU VM with a real KVM

docs/journey.md walks one hypercall from the guest to Python and back.
"""

__version__ = "0.1.0"
