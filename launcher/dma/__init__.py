"""The first lguest bus: Linux 2.6.23's devices, which move data by DMA
hypercalls instead of virtqueues (docs/abi.md §9.8).

The guest finds one page at guest-physical ``mem`` (just past its RAM)
holding up to 16 device descriptors {u16 type, features, status, num_pages;
u32 pfn}; a device that needs shared memory (block, net) gets pages of its
own after it. Device ``i`` interrupts on IRQ ``i + 1``.

Data moves in ``struct lguest_dma``s: a used length and up to 16
address/length pairs. Every transfer is named by a *key*, a guest-physical
address the two sides agree on:

- BIND_DMA(key, dmas, count << 8 | irq) offers the Host ``count`` receive
  buffers for that key, and the IRQ to raise when one is filled (irq 0
  takes them back);
- SEND_DMA(key, dma) hands the Host a buffer to deliver to whoever listens
  on the key: here, always the Launcher's side of a device, which carries
  it out before the call returns and writes the bytes it took into the
  buffer's used length.

bus.py is the bus (descriptor page, bindings, both calls, the thread that
feeds input into bound buffers); devices.py holds each device's side,
built on the same host-side objects as the virtio devices (a file, stdin
and stdout, a tap or passt).
"""
from .bus import DmaBus, check_devices, pages_needed
from .devices import port_for


def describe(device) -> str:
    """A device's --verbose line as Linux 2.6.23 sees it."""
    return port_for(device).describe()


__all__ = ["DmaBus", "check_devices", "describe", "pages_needed"]
