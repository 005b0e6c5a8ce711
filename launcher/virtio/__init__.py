"""virtio devices, written once against a transport-independent virtqueue.

- ``vring``    the split (legacy) virtqueue: walking chains with every index,
               address and length checked, the used ring, the etiquette flags
- ``device``   what a device is, and the thread that services its queues
- ``console``, ``block``, ``rng``: the devices
- ``lguest_bus`` the G1/G2 transport: the device page above RAM and NOTIFY

As in kvmtool, devices do not know which transport carries them; G3's
virtio-PCI transport slots in beside ``lguest_bus``.
"""
