"""cffi builder for the KVM shim (API, out-of-line mode).

Run at install time by setup.py; produces the extension module
``launcher._kvm``. The cdef below declares only the parts of the KVM ABI the
launcher uses; cffi checks every field offset against <linux/kvm.h> when it
compiles, so a mismatch fails the build instead of corrupting memory.
Next: kvm_shim.h for the C side, launcher/kvm.py for the Python side.
"""
from __future__ import annotations

import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))

CDEF = r"""
/* ioctl numbers and constants, taken from <linux/kvm.h> at build time. */
#define KVM_API_VERSION ...
#define KVM_GET_API_VERSION ...
#define KVM_CREATE_VM ...
#define KVM_CHECK_EXTENSION ...
#define KVM_GET_VCPU_MMAP_SIZE ...
#define KVM_GET_SUPPORTED_CPUID ...
#define KVM_SET_USER_MEMORY_REGION ...
#define KVM_CREATE_VCPU ...
#define KVM_SET_TSS_ADDR ...
#define KVM_GET_REGS ...
#define KVM_SET_REGS ...
#define KVM_GET_SREGS ...
#define KVM_SET_SREGS ...
#define KVM_SET_CPUID2 ...
#define KVM_GET_TSC_KHZ ...
#define KVM_SET_MSRS ...
#define KVM_INTERRUPT ...
#define KVM_IOEVENTFD ...
#define KVM_IOEVENTFD_FLAG_DATAMATCH ...
#define KVM_IOEVENTFD_FLAG_DEASSIGN ...
#define KVM_MEM_READONLY ...
#define KVM_CAP_IMMEDIATE_EXIT ...
#define KVM_CAP_READONLY_MEM ...
#define KVM_CAP_GET_TSC_KHZ ...
#define KVM_CAP_IOEVENTFD ...
#define KVM_CAP_SPLIT_IRQCHIP ...
#define KVM_CAP_SIGNAL_MSI ...
#define KVM_CAP_HALT_POLL ...
#define KVM_CAP_DISABLE_QUIRKS2 ...
#define KVM_X86_QUIRK_FIX_HYPERCALL_INSN ...
#define KVM_ENABLE_CAP ...
#define KVM_GET_LAPIC ...
#define KVM_SET_LAPIC ...
#define KVM_GET_MSRS ...
#define KVM_EXIT_UNKNOWN ...
#define KVM_EXIT_EXCEPTION ...
#define KVM_EXIT_IO ...
#define KVM_EXIT_HLT ...
#define KVM_EXIT_MMIO ...
#define KVM_EXIT_IRQ_WINDOW_OPEN ...
#define KVM_EXIT_SHUTDOWN ...
#define KVM_EXIT_FAIL_ENTRY ...
#define KVM_EXIT_INTR ...
#define KVM_EXIT_INTERNAL_ERROR ...
#define KVM_EXIT_IO_IN ...
#define KVM_EXIT_IO_OUT ...
#define SHIM_RUN_SIGNAL ...
#define SHIM_RUN_STOPPED ...

typedef unsigned long long __u64;
typedef unsigned int __u32;
typedef unsigned short __u16;
typedef unsigned char __u8;
typedef int __s32;

struct kvm_userspace_memory_region {
    __u32 slot;
    __u32 flags;
    __u64 guest_phys_addr;
    __u64 memory_size;
    __u64 userspace_addr;
};

struct kvm_regs {
    __u64 rax, rbx, rcx, rdx;
    __u64 rsi, rdi, rsp, rbp;
    __u64 r8, r9, r10, r11;
    __u64 r12, r13, r14, r15;
    __u64 rip, rflags;
};

struct kvm_segment {
    __u64 base;
    __u32 limit;
    __u16 selector;
    __u8 type;
    __u8 present, dpl, db, s, l, g, avl;
    __u8 unusable;
    ...;
};

struct kvm_dtable {
    __u64 base;
    __u16 limit;
    ...;
};

struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss;
    struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt;
    __u64 cr0, cr2, cr3, cr4, cr8;
    __u64 efer;
    __u64 apic_base;
    __u64 interrupt_bitmap[...];
};

struct kvm_cpuid_entry2 {
    __u32 function;
    __u32 index;
    __u32 flags;
    __u32 eax;
    __u32 ebx;
    __u32 ecx;
    __u32 edx;
    ...;
};

struct kvm_cpuid2 {
    __u32 nent;
    struct kvm_cpuid_entry2 entries[];
    ...;
};

struct kvm_msr_entry {
    __u32 index;
    __u32 reserved;
    __u64 data;
};

struct kvm_msrs {
    __u32 nmsrs;
    struct kvm_msr_entry entries[];
    ...;
};

struct kvm_interrupt {
    __u32 irq;
};

struct kvm_enable_cap {
    __u32 cap;
    __u32 flags;
    __u64 args[4];
    ...;
};

struct kvm_lapic_state {
    char regs[1024];
};

struct kvm_ioeventfd {
    __u64 datamatch;
    __u64 addr;
    __u32 len;
    __s32 fd;
    __u32 flags;
    ...;
};

struct kvm_run_io {
    __u8 direction;
    __u8 size;
    __u16 port;
    __u32 count;
    __u64 data_offset;
};

struct kvm_run_mmio {
    __u64 phys_addr;
    __u8 data[8];
    __u32 len;
    __u8 is_write;
};

struct kvm_run_internal {
    __u32 suberror;
    __u32 ndata;
    __u64 data[16];
};

struct kvm_run_fail_entry {
    __u64 hardware_entry_failure_reason;
    ...;
};

struct kvm_run {
    __u8 request_interrupt_window;
    __u8 immediate_exit;
    __u32 exit_reason;
    __u8 ready_for_interrupt_injection;
    __u8 if_flag;
    __u16 flags;
    __u64 cr8;
    __u64 apic_base;
    ...;
};

%(SHIM_DECLARATIONS)s

/* Views of the exit-specific union members, which cdef cannot name. */
struct kvm_run_io *shim_run_io(struct kvm_run *run);
struct kvm_run_mmio *shim_run_mmio(struct kvm_run *run);
struct kvm_run_internal *shim_run_internal(struct kvm_run *run);
uint64_t shim_run_fail_reason(struct kvm_run *run);
"""

SOURCE = r"""
#include "kvm_shim.h"

/* Newer than some distributions' headers; the kernel says at run time
   whether it has them (KVM_CHECK_EXTENSION). */
#ifndef KVM_CAP_HALT_POLL
#define KVM_CAP_HALT_POLL 182
#endif
#ifndef KVM_CAP_DISABLE_QUIRKS2
#define KVM_CAP_DISABLE_QUIRKS2 213
#endif
#ifndef KVM_X86_QUIRK_FIX_HYPERCALL_INSN
#define KVM_X86_QUIRK_FIX_HYPERCALL_INSN (1 << 5)
#endif

/* The anonymous union in kvm_run is reached through these tiny accessors;
   the typedefs give its members names cffi can verify. */
struct kvm_run_io { __u8 direction; __u8 size; __u16 port;
                    __u32 count; __u64 data_offset; };
struct kvm_run_mmio { __u64 phys_addr; __u8 data[8]; __u32 len;
                      __u8 is_write; };
struct kvm_run_internal { __u32 suberror; __u32 ndata; __u64 data[16]; };
struct kvm_run_fail_entry { __u64 hardware_entry_failure_reason; };

_Static_assert(sizeof(((struct kvm_run *)0)->io) == sizeof(struct kvm_run_io), "io");
_Static_assert(sizeof(((struct kvm_run *)0)->mmio) == sizeof(struct kvm_run_mmio), "mmio");

static struct kvm_run_io *shim_run_io(struct kvm_run *run)
{ return (struct kvm_run_io *)&run->io; }
static struct kvm_run_mmio *shim_run_mmio(struct kvm_run *run)
{ return (struct kvm_run_mmio *)&run->mmio; }
static struct kvm_run_internal *shim_run_internal(struct kvm_run *run)
{ return (struct kvm_run_internal *)&run->internal; }
static uint64_t shim_run_fail_reason(struct kvm_run *run)
{ return run->fail_entry.hardware_entry_failure_reason; }
"""

def shim_declarations() -> str:
    """The shim's structs and prototypes, as kvm_shim.h declares them (the
    block between its cffi-begin and cffi-end markers), so they are written
    once."""
    with open(os.path.join(HERE, "kvm_shim.h")) as f:
        text = f.read()
    begin = text.index("cffi-begin")
    begin = text.index("\n", begin) + 1
    end = text.rindex("/* cffi-end */")
    return text[begin:end]


ffibuilder = FFI()
ffibuilder.cdef(CDEF.replace("%(SHIM_DECLARATIONS)s", shim_declarations()))
ffibuilder.set_source(
    "launcher._kvm",
    SOURCE,
    sources=["native/kvm_shim.c"],  # relative to the project root, where setup.py runs
    include_dirs=["native"],
    extra_compile_args=["-O2", "-Wall"],
    libraries=["pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
