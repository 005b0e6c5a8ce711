/*
 * switcher.S - the in-VM Switcher: a few pages of ring-0 code at the top of
 * the guest's address space.
 *
 * Under the original lguest the Switcher swapped the whole machine between
 * Host and Guest. Here KVM does that, so what is left is small: catch every
 * trap the Host must see, lay the guest's registers out as lguest's
 * `struct lguest_regs`, leave the VM with a single `out`, and when Python
 * resumes us, carry out the privileged requests it left (cr3, TLB flushes,
 * CR0.TS, the one-time switch to PAE paging) and `iret` back to ring 1 or 3.
 *
 * This file is also the single source of the Switcher region's layout: the
 * SW_* symbols below are absolute ELF symbols that launcher/switcher.py reads
 * with pyelftools, so Python and this code can never disagree about where
 * the GDT or the register page lives.
 *
 * Read launcher/switcher.py next, then docs/journey.md for one exit end to end.
 */
        .code32

/* ---- The region: 0xFFC00000, the top 4 MiB lguest always reserved ---- */
        .globl SW_BASE, SW_GDT, SW_IDT, SW_TSS, SW_RO_END
        .globl SW_REGPAGE, SW_LINEAR_PD, SW_PT, SW_PAE_PT, SW_RW_END
        .set SW_BASE,       0xFFC00000
        /* read-only to the guest (KVM_MEM_READONLY): code, GDT, IDT, TSS */
        .set SW_GDT,        SW_BASE + 0x2000
        .set SW_IDT,        SW_BASE + 0x3000
        .set SW_TSS,        SW_BASE + 0x4000
        .set SW_RO_END,     SW_BASE + 0x5000
        /* writable: the register page and the Host's own page tables
           (a page-table walk through a read-only slot fails under NPT) */
        .set SW_REGPAGE,    SW_BASE + 0x5000
        .set SW_LINEAR_PD,  SW_BASE + 0x6000
        .set SW_PT,         SW_BASE + 0x7000
        .set SW_PAE_PT,     SW_BASE + 0x8000
        .set SW_RW_END,     SW_BASE + 0x9000

/* ---- Selectors and ports ---- */
        .globl LGUEST_CS, LGUEST_DS, SW_EXIT_PORT, SW_FAULT_PORT
        .set LGUEST_CS,     10 * 8          /* GDT 10: Host ring-0 code */
        .set LGUEST_DS,     11 * 8          /* GDT 11: Host ring-0 data */
        .set SW_EXIT_PORT,  0xF1            /* every trap leaves through here */
        .set SW_FAULT_PORT, 0xF2            /* a fault inside the Switcher */

/*
 * ---- The register page ----
 * The TSS's esp0 points at the top of this page, so a trap from ring 1 or 3
 * makes the CPU push eip, cs, eflags, esp, ss at its very end; the entry code
 * pushes the rest below them, giving `struct lguest_regs` (72 bytes). The
 * bottom of the page holds the requests Python leaves for us and what we
 * record for Python. Everything between is our ring-0 stack.
 */
        .globl SW_REGS, SW_REGS_SIZE
        .globl SW_REQ_FLAGS, SW_REQ_CR3, SW_REQ_NINVLPG, SW_REQ_INVLPG, SW_REQ_INVLPG_MAX
        .globl SW_EXIT_CR2, SW_FAULT_VECTOR, SW_FAULT_ERRCODE, SW_FAULT_EIP, SW_FAULT_VALID
        .set SW_REGS_SIZE,      72
        .set SW_REGS,           SW_REGPAGE + 0x1000 - SW_REGS_SIZE
        .set SW_REQ_FLAGS,      SW_REGPAGE + 0x00   /* REQ_* bits below */
        .set SW_REQ_CR3,        SW_REGPAGE + 0x04   /* for REQ_LOAD_CR3 / REQ_ENABLE_PAE */
        .set SW_REQ_NINVLPG,    SW_REGPAGE + 0x08   /* entries used in SW_REQ_INVLPG */
        .set SW_EXIT_CR2,       SW_REGPAGE + 0x0C   /* cr2 at a page-fault exit */
        .set SW_FAULT_VALID,    SW_REGPAGE + 0x10   /* 1 after a fault inside the Switcher */
        .set SW_FAULT_VECTOR,   SW_REGPAGE + 0x14
        .set SW_FAULT_ERRCODE,  SW_REGPAGE + 0x18
        .set SW_FAULT_EIP,      SW_REGPAGE + 0x1C
        .set SW_REQ_INVLPG,     SW_REGPAGE + 0x40   /* u32 virtual addresses */
        .set SW_REQ_INVLPG_MAX, 32

/*
 * ---- The page-fault fast path (docs/architecture.md, "Traps: direct, handled, reflected") ----
 * Python keeps these up to date in the GDT page, which the guest sees
 * read-only: whether the fast path is on, the guest's #PF handler and gate
 * type, its ring-1 stack, and where lguest_data's cr2 and irq_enabled are
 * seen through the two-page window the Host maps at SW_LDATA_WINDOW.
 * The Switcher's own bookkeeping (busy flag, count) is in the register page.
 */
        .globl SW_FAST, SW_FAST_ON, SW_FAST_HANDLER, SW_FAST_IGATE, SW_FAST_SS1
        .globl SW_FAST_ESP1, SW_FAST_CR2_AT, SW_FAST_IRQ_AT, SW_LDATA_WINDOW
        .globl SW_FAST_BUSY, SW_FAST_COUNT
        .set SW_FAST,           SW_GDT + 0x800
        .set SW_FAST_ON,        SW_FAST + 0x00
        .set SW_FAST_HANDLER,   SW_FAST + 0x04
        .set SW_FAST_IGATE,     SW_FAST + 0x08   /* 1: an interrupt gate (irqs off) */
        .set SW_FAST_SS1,       SW_FAST + 0x0C
        .set SW_FAST_ESP1,      SW_FAST + 0x10   /* 0 until SET_STACK: ring 3 goes slow */
        .set SW_FAST_CR2_AT,    SW_FAST + 0x14
        .set SW_FAST_IRQ_AT,    SW_FAST + 0x18
        .set SW_LDATA_WINDOW,   SW_BASE + 0x9000 /* 2 pages, mapped onto lguest_data */
        .set SW_FAST_BUSY,      SW_REGPAGE + 0x20
        .set SW_FAST_COUNT,     SW_REGPAGE + 0x24
/*
 * #GP(0) that Host.on_general_protection would answer alone: `in`/`out` at
 * ring 1 to a port no device claims (reads all ones, writes dropped), `cli`
 * at ring 1 (skipped), and CPUID where the Machine made it fault (answered
 * from the table Python wrote once). Claimed ports: up to SW_IO_RANGES
 * inclusive [first, last] pairs; a pair with last < first is unused.
 */
        .globl SW_IO_ON, SW_IO_CLAIMED, SW_IO_RANGES, SW_CPUID_N, SW_CPUID_TABLE
        .globl SW_CPUID_MAX, SW_FAST_GPS
        .set SW_IO_ON,          SW_FAST + 0x60
        .set SW_CPUID_N,        SW_FAST + 0x64   /* entries in SW_CPUID_TABLE; 0: exit */
        .set SW_IO_CLAIMED,     SW_FAST + 0x68
        .set SW_IO_RANGES,      4
        .set SW_CPUID_TABLE,    SW_TSS + 0x800   /* function index flags eax ebx ecx edx */
        .set SW_CPUID_MAX,      (0x1000 - 0x800) / 28
        .set SW_FAST_GPS,       SW_REGPAGE + 0xEC
/*
 * Configuration writes the Switcher keeps to itself (launcher/virtio/pci_bus.py):
 * a G3 guest's early console sets up the PCI_CFG window with three of them
 * per character, each behind an address written to 0xCF8. The latch and the
 * window's fields are plain storage: Python lists the dwords (by their
 * latch value: enable bit set, low two bits clear), we merge the bytes
 * written into their copies in the register page, and Python reads the
 * copies back whenever it handles a configuration cycle itself.
 */
        .globl SW_PCI_N, SW_PCI_TABLE, SW_PCI_MAX, SW_PCI_LATCH, SW_PCI_SHADOW
        .set SW_PCI_N,          SW_FAST + 0xA0   /* entries in SW_PCI_TABLE; 0: all exit */
        .set SW_PCI_TABLE,      SW_FAST + 0xA4   /* u32 latch values */
        .set SW_PCI_MAX,        16
        .set SW_PCI_LATCH,      SW_REGPAGE + 0x100  /* what the guest last wrote to 0xCF8 */
        .set SW_PCI_SHADOW,     SW_REGPAGE + 0x104  /* u32 per entry, in the table's order */
/*
 * And the console's emergency write, the early console's one exit per
 * character: a dword written to the console's PCI_CFG data (latch
 * SW_EMERG_LATCH) while its window (table entries 0-2: bar, offset,
 * length) says bar 0, emerg_wr (SW_EMERG_OFFSET), 4 bytes, is a byte for
 * the console. We gather a line of them in the register page; a newline,
 * or a full buffer, exits as before; Python writes out what we gathered
 * at every exit, before it handles the exit (host/fastpath.py), and so
 * that bytes without a newline never wait on an idle guest, HALT exits
 * while any are gathered (fast_hypercall).
 */
        .globl SW_EMERG_LATCH, SW_EMERG_OFFSET, SW_EMERG_N, SW_EMERG_BUF, SW_EMERG_MAX
        .set SW_EMERG_LATCH,    SW_FAST + 0xE8   /* 0: every such write exits */
        .set SW_EMERG_OFFSET,   SW_FAST + 0xEC   /* emerg_wr's offset in BAR 0 */
        .set SW_EMERG_N,        SW_REGPAGE + 0x144  /* bytes in SW_EMERG_BUF */
        .set SW_EMERG_BUF,      SW_REGPAGE + 0x180
        .set SW_EMERG_MAX,      128
/* The same for system calls through an interrupt gate (Linux 4.x's int $0x80). */
        .globl SW_FAST_SYS_HANDLER, SW_FAST_SYSCALLS
        .set SW_FAST_SYS_HANDLER, SW_FAST + 0x50  /* 0: every system call exits */
        .set SW_FAST_SYSCALLS,  SW_REGPAGE + 0xE8

/*
 * ---- The clock in the VM (docs/architecture.md, "The clock in the VM") ----
 * With the local APIC in KVM (x2APIC mode, set up by launcher/machine.py),
 * the guest's clock event is the APIC timer: SET_CLOCKEVENT writes its
 * count (one count is one nanosecond: KVM's APIC bus runs at 1 GHz and the
 * divider is 1), its expiry is vector SW_TIMER_VECTOR, delivered here as
 * the guest's IRQ 0, and HALT is a real `hlt`, so KVM parks the vCPU until
 * an interrupt. All of it is what Python does (launcher/host/clockfast.py
 * publishes the facts below and stays the reference path); whenever a case
 * is not plainly the common one, we leave for Python instead.
 * Python's facts, in the GDT page (read-only to the guest):
 */
        .globl SW_APIC_ON, SW_CLK_ON, SW_TICK_HANDLER, SW_TICK_IGATE, SW_BLOCKED_AT
        .globl SW_IRQPEND_AT, SW_NOIRQ_START, SW_NOIRQ_END, SW_NOIRQ_IRET, SW_HSTATUS_AT
        .globl SW_TIME_AT, SW_TSC_MULT, SW_NS_BASE, SW_FAST_END
        .set SW_APIC_ON,        SW_FAST + 0x1C   /* the LAPIC is KVM's: EOI what we take */
        .set SW_CLK_ON,         SW_FAST + 0x20   /* the fast clock, HALT and tick */
        .set SW_TICK_HANDLER,   SW_FAST + 0x24   /* the guest's gate 32 (IRQ 0); 0: none */
        .set SW_TICK_IGATE,     SW_FAST + 0x28
        .set SW_BLOCKED_AT,     SW_FAST + 0x2C   /* lguest_data fields, in the window */
        .set SW_IRQPEND_AT,     SW_FAST + 0x30
        .set SW_NOIRQ_START,    SW_FAST + 0x34   /* G1/G2 iret window [start, end) */
        .set SW_NOIRQ_END,      SW_FAST + 0x38
        .set SW_NOIRQ_IRET,     SW_FAST + 0x3C   /* G3's final iret, or ~0 */
        .set SW_HSTATUS_AT,     SW_FAST + 0x40   /* the async ring's status bytes */
        .set SW_TIME_AT,        SW_FAST + 0x44   /* lguest_data.time */
        .set SW_TSC_MULT,       SW_FAST + 0x48   /* ns per TSC tick << 24 */
        .set SW_NS_BASE,        SW_FAST + 0x54   /* u64: wall-clock ns at SW_TSC_BASE */
/*
 * SET_PTE (what PageTables.set_pte checks and does): an entry outside our
 * region, not a large page, its frame below SW_PTE_LIMIT, then `invlpg`
 * if the table is the current one or the address the kernel's.
 */
        .globl SW_HCALL_ON, SW_PTE_MODE, SW_PTE_LIMIT, SW_KERNEL_ADDR, SW_PT_CR3, SW_FAST_PTES
        .set SW_HCALL_ON,       SW_FAST + 0x88   /* lguest_data is in the window */
        .set SW_PTE_MODE,       SW_FAST + 0x8C   /* 0: Python; 1: two-level; 2: PAE */
        .set SW_PTE_LIMIT,      SW_FAST + 0x90   /* the end of RAM and device pages */
        .set SW_KERNEL_ADDR,    SW_FAST + 0x94
        .set SW_PT_CR3,         SW_FAST + 0x98   /* the table Python last loaded */
        .set SW_FAST_PTES,      SW_REGPAGE + 0xF0
        .set SW_SENDINT_CALL,   SW_FAST + 0xE4   /* the generation's SEND_INTERRUPTS; 0: none */
        .set SW_FAST_END,       SW_FAST + 0xF0
        .set LHCALL_SET_PTE,    14
        .set PTE_P,             0x1
        .set PTE_PS,            0x80
/* Ours and Python's, in the register page: */
        .globl SW_CLK_PENDING, SW_HOST_PENDING, SW_HCALL_NEXT, SW_REQ_TMICT, SW_TSC_BASE
        .globl SW_HALTED, SW_FAST_CLOCKEVENTS, SW_FAST_HALTS, SW_FAST_TICKS
        .globl SW_SENDINT_CALL, SW_FAST_SENDS
        .globl SW_TIMER_VECTOR, SW_SPURIOUS_VECTOR
        .set SW_CLK_PENDING,    SW_REGPAGE + 0xC0   /* IRQ 0 raised, not delivered: Python takes it */
        .set SW_HOST_PENDING,   SW_REGPAGE + 0xC4   /* Python's pending IRQs at the last resume */
        .set SW_HCALL_NEXT,     SW_REGPAGE + 0xC8   /* Python's async-ring cursor */
        .set SW_REQ_TMICT,      SW_REGPAGE + 0xCC   /* for REQ_ARM_TIMER */
        .set SW_TSC_BASE,       SW_REGPAGE + 0xD0   /* u64, for REQ_STAMP */
        .set SW_HALTED,         SW_REGPAGE + 0xD8   /* 1: the guest is in HALT (Python reads) */
        .set SW_FAST_CLOCKEVENTS, SW_REGPAGE + 0xDC
        .set SW_FAST_HALTS,     SW_REGPAGE + 0xE0
        .set SW_FAST_TICKS,     SW_REGPAGE + 0xE4
        .globl SW_IRQPEND_SINK
        .set SW_IRQPEND_SINK,   SW_REGPAGE + 0xF4   /* SW_IRQPEND_AT for a guest with no irq_pending */
        .set SW_FAST_SENDS,     SW_REGPAGE + 0xF8   /* SEND_INTERRUPTS that delivered IRQ 0 */
        .set SW_TIMER_VECTOR,   0xEF
        .set SW_SPURIOUS_VECTOR, 0xFF
        .set MSR_X2APIC_EOI,    0x80B
        .set MSR_X2APIC_TMICT,  0x838
        .set LHCALL_SET_CLOCKEVENT, 9
        .set LHCALL_HALT,       10
        .set LHCALL_RING_SIZE,  64
        .set SYSCALL_VECTOR,    0x80
        .set HELD_BACK_NS,      2000000   /* Python's HELD_BACK_KICK_NS */
        .set NSEC_PER_SEC,      1000000000

        .set GUEST_CS_SEL,  (12 * 8) | 1
        .set LGUEST_TRAP_ENTRY_VEC, 0x1F
        .set EFLAGS_IF,     0x200
        .set EFLAGS_CLEAR,  0x100 | 0x4000 | 0x10000 | 0x20000   /* TF NT RF VM */

        .globl REQ_LOAD_CR3, REQ_FLUSH, REQ_INVLPG, REQ_SET_TS, REQ_CLEAR_TS, REQ_ENABLE_PAE
        .globl REQ_ARM_TIMER, REQ_STAMP, REQ_HALT
        .set REQ_LOAD_CR3,   0x01   /* mov SW_REQ_CR3 -> cr3 (flushes non-global) */
        .set REQ_FLUSH,      0x02   /* reload cr3: with CR4.PGE off this drops all */
        .set REQ_INVLPG,     0x04   /* invlpg each of SW_REQ_INVLPG[0..n) */
        .set REQ_SET_TS,     0x08
        .set REQ_CLEAR_TS,   0x10
        .set REQ_ENABLE_PAE, 0x20   /* paging off, CR4.PAE on (PSE off), cr3, paging on */
        .set REQ_ARM_TIMER,  0x40   /* APIC timer count = SW_REQ_TMICT */
        .set REQ_STAMP,      0x80   /* SW_TSC_BASE = now: Python just set SW_NS_BASE */
        .set REQ_HALT,       0x100  /* halt instead of resuming (HALT, nothing pending) */

        .set CR0_PG, 0x80000000
        .set CR0_TS, 0x00000008
        .set CR4_PSE, 0x00000010
        .set CR4_PAE, 0x00000020

        .text
        .globl switcher_entries, switcher_common, switcher_resume
        .globl restore_gs, restore_fs, restore_ds, restore_es, restore_iret
        .globl switcher_fault, bench_out_loop, fast_page_fault, halt_insn, halt_woken

/*
 * ---- 256 entry stubs, 16 bytes apart ----
 * Vectors 8, 10-14 and 17 come with an error code pushed by the CPU; for the
 * others we push a 0 so every frame has the same shape. The real IDT never
 * lets software `int` reach an error-code stub (launcher/switcher.py gives
 * those gates DPL 0), or the frame would be one word short.
 */
        .balign 16
switcher_entries:
        .set vec, 0
        .rept 256
        .balign 16
        .if (vec == 8) || ((vec >= 10) && (vec <= 14)) || (vec == 17)
        .else
        pushl $0
        .endif
        pushl $vec
        jmp switcher_common
        .set vec, vec + 1
        .endr

/*
 * ---- The way out ----
 * Here esp points at the trap number; above it errcode, then the CPU frame.
 * A trap that came from ring 0 is a fault inside the Switcher itself (a bad
 * selector or iret frame while restoring the guest): there is no guest frame
 * to save, so record what happened and leave through the fault port. Python
 * kills the guest with a message naming the instruction that faulted.
 */
switcher_common:
        testl $3, 12(%esp)          /* cs of the interrupted code */
        jz switcher_fault
        pushl %es
        pushl %ds
        pushl %fs
        pushl %gs
        pushl %ebp
        pushl %edi
        pushl %esi
        pushl %edx
        pushl %ecx
        pushl %ebx
        pushl %eax
        movl $LGUEST_DS, %eax
        movl %eax, %ds
        movl %eax, %es
        movl 44(%esp), %eax         /* the trap number */
        /* Python needs cr2 for a page fault; only the Switcher can read it. */
        cmpl $14, %eax
        jne 1f
        movl %cr2, %eax
        movl %eax, SW_EXIT_CR2
        cmpl $0, SW_FAST_ON
        jne fast_page_fault
        jmp exit_to_host
1:      cmpl $LGUEST_TRAP_ENTRY_VEC, %eax
        je fast_hypercall
        cmpl $SYSCALL_VECTOR, %eax
        je fast_syscall
        cmpl $13, %eax
        je fast_gp
        cmpl $0, SW_APIC_ON
        jne apic_dispatch
exit_to_host:
        outb %al, $SW_EXIT_PORT
        /* KVM_RUN resumed us: Python has rewritten the frame and the requests. */
switcher_resume:
        movl SW_REQ_FLAGS, %ebx
        testl %ebx, %ebx
        jnz do_requests
restore:
        popl %eax
        popl %ebx
        popl %ecx
        popl %edx
        popl %esi
        popl %edi
        popl %ebp
restore_gs:
        popl %gs
restore_fs:
        popl %fs
restore_ds:
        popl %ds
restore_es:
        popl %es
        addl $8, %esp               /* trapnum, errcode */
restore_iret:
        iret

/*
 * ---- Requests ----
 * ebx holds the request bits. Clear them first so a request is never carried
 * out twice, whatever happens next.
 */
do_requests:
        movl $0, SW_REQ_FLAGS
        testl $REQ_STAMP, %ebx
        jz 1f
        rdtsc
        movl %eax, SW_TSC_BASE
        movl %edx, SW_TSC_BASE + 4
1:      testl $REQ_ARM_TIMER, %ebx
        jz 1f
        movl SW_REQ_TMICT, %eax
        call apic_arm
1:      testl $REQ_ENABLE_PAE, %ebx
        jz 2f
        /*
         * CR4.PAE cannot change while paging is on. We run at virtual ==
         * physical, so turning paging off for three instructions is safe;
         * the guest's new PAE tables map this region through PMD slot 510.
         */
        movl %cr0, %eax
        andl $~CR0_PG, %eax
        movl %eax, %cr0
        movl %cr4, %eax
        andl $~CR4_PSE, %eax
        orl $CR4_PAE, %eax
        movl %eax, %cr4
        movl SW_REQ_CR3, %eax
        movl %eax, %cr3
        movl %cr0, %eax
        orl $CR0_PG, %eax
        movl %eax, %cr0
        jmp 3f
2:      testl $REQ_LOAD_CR3, %ebx
        jz 3f
        movl SW_REQ_CR3, %eax
        movl %eax, %cr3
        jmp 4f                      /* a cr3 load already flushed everything */
3:      testl $REQ_FLUSH, %ebx
        jz 5f
        movl %cr3, %eax
        movl %eax, %cr3
        jmp 4f
5:      testl $REQ_INVLPG, %ebx
        jz 4f
        movl SW_REQ_NINVLPG, %ecx
        cmpl $SW_REQ_INVLPG_MAX, %ecx
        jbe 6f
        movl $SW_REQ_INVLPG_MAX, %ecx
6:      movl $SW_REQ_INVLPG, %esi
        jmp 8f
7:      movl (%esi), %eax
        invlpg (%eax)
        addl $4, %esi
        decl %ecx
8:      testl %ecx, %ecx
        jnz 7b
4:      testl $REQ_SET_TS, %ebx
        jz 9f
        movl %cr0, %eax
        orl $CR0_TS, %eax
        movl %eax, %cr0
9:      testl $REQ_CLEAR_TS, %ebx
        jz 10f
        clts
10:     testl $REQ_HALT, %ebx
        jnz halt_now
        jmp restore

/*
 * ---- Entering a guest handler without leaving the VM ----
 * What Traps.deliver does in Python: the frame the CPU would have pushed
 * for a gate to the guest's handler (from ring 3: onto the ring-1 stack,
 * old ss:esp first; eflags.IF mirroring irq_enabled; an error code last if
 * there is one), irq_enabled cleared for an interrupt gate, and the saved
 * frame pointed at the handler. Only the guest-stack stores can fault (a
 * hostile or broken guest's stack): SW_FAST_BUSY makes such a fault abandon
 * the fast path and leave through the ordinary exit with the frame
 * untouched, so Python decides.
 * In: ebx = the handler, ebp = nonzero for an interrupt gate, ecx = 1 to
 * push the error code. The saved registers are addressed absolutely
 * (SW_REGS + n), as this is called. Clobbers eax, edx, esi, edi.
 */
fast_deliver:
        movl $1, SW_FAST_BUSY
        testl $2, SW_REGS + 56          /* cs RPL 3 (not 1): from user mode */
        jz 2f
        movl SW_FAST_ESP1, %esi
        testl %esi, %esi
        jz fast_abort                   /* no ring-1 stack yet */
        call check_guest_stack
        movl SW_FAST_SS1, %edx
        movl SW_REGS + 68, %eax         /* the old ss and esp go first */
        movl %eax, -4(%esi)
        movl SW_REGS + 64, %eax
        movl %eax, -8(%esi)
        subl $8, %esi
        jmp 3f
2:      movl SW_REGS + 64, %esi
        call check_guest_stack
        movl SW_REGS + 68, %edx
3:      movl SW_REGS + 60, %eax
        movl SW_FAST_IRQ_AT, %edi
        testl $EFLAGS_IF, (%edi)
        jnz 4f
        andl $~EFLAGS_IF, %eax
4:      movl %eax, -4(%esi)             /* eflags */
        movl SW_REGS + 56, %eax
        movl %eax, -8(%esi)             /* cs */
        movl SW_REGS + 52, %eax
        movl %eax, -12(%esi)            /* eip */
        subl $12, %esi
        testl %ecx, %ecx
        jz 5f
        movl SW_REGS + 48, %eax
        movl %eax, -4(%esi)             /* error code */
        subl $4, %esi
        /* Every store landed: from here nothing can fault. */
5:      movl $0, SW_FAST_BUSY
        movl %esi, SW_REGS + 64
        movl %edx, SW_REGS + 68
        movl $GUEST_CS_SEL, SW_REGS + 56
        movl %ebx, SW_REGS + 52
        andl $~EFLAGS_CLEAR, SW_REGS + 60
        testl %ebp, %ebp
        jz 6f
        movl $0, (%edi)                 /* an interrupt gate: irq_enabled = 0 */
6:      ret

/*
 * The frame (at most 6 words) must lie below the Switcher's region and not
 * wrap: a guest stack pointer there would have us write our own pages.
 * Python's push refuses such a stack too, so leave it to Python.
 */
check_guest_stack:
        cmpl $SW_BASE, %esi
        ja fast_abort
        cmpl $24, %esi
        jb fast_abort
        ret

/* ---- A page fault: cr2 (in eax) into lguest_data, then the guest's #PF handler ---- */
fast_page_fault:
        movl SW_FAST_CR2_AT, %edi
        movl %eax, (%edi)               /* lguest_data.cr2 (window: cannot fault) */
        movl SW_FAST_HANDLER, %ebx
        movl SW_FAST_IGATE, %ebp
        movl $1, %ecx
        call fast_deliver
        incl SW_FAST_COUNT
        jmp restore

/*
 * ---- #GP(0): port I/O, cli, CPUID (Host.emulate_io and emulate_cpuid) ----
 * Reading the instruction can fault (an unmapped eip): SW_FAST_BUSY turns
 * that into the ordinary exit, and Python reads it again and decides.
 */
fast_gp:
        cmpl $0, SW_IO_ON
        je exit_to_host
        cmpl $0, SW_REGS + 48           /* error code 0 only */
        jne exit_to_host
        movl SW_REGS + 52, %esi         /* eip */
        cmpl $SW_BASE - 4, %esi         /* never our own pages */
        jae exit_to_host
        movl $1, SW_FAST_BUSY
        movzwl (%esi), %eax
        cmpl $0xA20F, %eax              /* 0f a2: cpuid, from ring 1 or 3 */
        je fast_cpuid
        testl $2, SW_REGS + 56          /* the rest only at ring 1 */
        jnz fast_gp_exit
        xorl %ecx, %ecx                 /* ecx: prefix bytes */
        movl $4, %edi                   /* edi: operand size */
        movzbl %al, %eax
        cmpl $0x66, %eax
        jne 1f
        movl $1, %ecx
        movl $2, %edi
        movzbl 1(%esi), %eax
1:      leal 1(%ecx), %ebp              /* ebp: instruction length */
        cmpl $0xFA, %eax                /* cli: the guest's IF is virtual */
        je 6f
        movl %eax, %ebx
        andl $0xFC, %ebx
        cmpl $0xEC, %ebx                /* ec-ef: the port in dx */
        jne 2f
        movzwl SW_REGS + 12, %edx
        jmp 3f
2:      cmpl $0xE4, %ebx                /* e4-e7: an imm8 port */
        jne fast_gp_exit
        movzbl 1(%esi,%ecx), %edx
        incl %ebp
3:      movl $0, SW_FAST_BUSY           /* every byte read */
        testl $1, %eax
        jnz 4f
        movl $1, %edi                   /* in/out of a byte */
4:      cmpl $0, SW_PCI_N               /* configuration writes we may keep */
        je 11f
        testl $2, %eax
        jz 11f
        cmpl $0xCF8, %edx
        jne 12f
        cmpl $4, %edi                   /* the address latch: a whole dword only */
        jne exit_to_host
        movl SW_REGS + 0, %ebx
        movl %ebx, SW_PCI_LATCH
        jmp 6f
12:     leal -0xCFC(%edx), %ecx         /* ecx: the byte within the data dword */
        cmpl $3, %ecx
        ja 11f                          /* (unsigned) not a data port */
        leal (%ecx,%edi), %ebx
        cmpl $4, %ebx
        ja exit_to_host                 /* spilling past the dword: Python */
        movl SW_PCI_LATCH, %ebx
        testl %ebx, %ebx
        jns exit_to_host                /* no enable bit: Python */
        andl $0xFFFFFFFC, %ebx
        cmpl SW_EMERG_LATCH, %ebx
        je 16f
        movl SW_PCI_N, %esi
        cmpl $SW_PCI_MAX, %esi
        ja exit_to_host
        xorl %eax, %eax                 /* eax: the entry (the opcode is done with) */
13:     cmpl SW_PCI_TABLE(,%eax,4), %ebx
        je 14f
        incl %eax
        cmpl %esi, %eax
        jb 13b
        jmp exit_to_host                /* any other dword: Python */
14:     shll $3, %ecx                   /* cl: where the bytes go */
        movl $0xFF, %ebx
        cmpl $1, %edi
        je 15f
        movl $0xFFFF, %ebx
        cmpl $2, %edi
        je 15f
        movl $0xFFFFFFFF, %ebx
15:     shll %cl, %ebx                  /* ebx: the bytes written */
        movl SW_REGS + 0, %edx
        shll %cl, %edx
        andl %ebx, %edx
        notl %ebx
        andl SW_PCI_SHADOW(,%eax,4), %ebx
        orl %edx, %ebx
        movl %ebx, SW_PCI_SHADOW(,%eax,4)
        jmp 6f
16:     cmpl $4, %edi                   /* the emergency write: a whole dword */
        jne exit_to_host
        testb $0xFF, SW_PCI_SHADOW      /* the window: bar 0 */
        jnz exit_to_host
        movl SW_EMERG_OFFSET, %ebx
        cmpl %ebx, SW_PCI_SHADOW + 4    /* at emerg_wr */
        jne exit_to_host
        cmpl $4, SW_PCI_SHADOW + 8      /* 4 bytes long */
        jne exit_to_host
        movzbl SW_REGS + 0, %eax        /* the byte */
        cmpl $0x0A, %eax
        je exit_to_host                 /* a line's end: Python writes the line */
        movl SW_EMERG_N, %ecx
        cmpl $SW_EMERG_MAX, %ecx
        jae exit_to_host                /* (unsigned) full: Python empties it */
        movb %al, SW_EMERG_BUF(%ecx)
        incl %ecx
        movl %ecx, SW_EMERG_N
        jmp 6f
11:     movl $SW_IO_CLAIMED, %ebx       /* a port a device claims: Python */
        movl $SW_IO_RANGES, %ecx
5:      cmpl (%ebx), %edx
        jb 7f
        cmpl 4(%ebx), %edx
        jbe exit_to_host
7:      addl $8, %ebx
        decl %ecx
        jnz 5b
        testl $2, %eax                  /* out: dropped */
        jnz 6f
        movl $0xFF, %eax                /* in: all ones, as wide as asked */
        cmpl $1, %edi
        je 8f
        movl $0xFFFF, %eax
        cmpl $2, %edi
        je 8f
        movl $0xFFFFFFFF, %eax
8:      orl %eax, SW_REGS + 0
6:      movl $0, SW_FAST_BUSY
        addl %ebp, SW_REGS + 52         /* past the instruction */
        incl SW_FAST_GPS
        jmp restore

fast_gp_exit:
        movl $0, SW_FAST_BUSY
        jmp exit_to_host

/* The first entry for the leaf (and subleaf, if it has them); zeros if none. */
fast_cpuid:
        movl $0, SW_FAST_BUSY
        movl SW_CPUID_N, %ecx
        testl %ecx, %ecx
        jz exit_to_host
        cmpl $SW_CPUID_MAX, %ecx
        ja exit_to_host
        movl $SW_CPUID_TABLE, %ebx
        movl SW_REGS + 0, %eax          /* leaf */
        movl SW_REGS + 8, %edx          /* subleaf */
1:      cmpl (%ebx), %eax
        jne 2f
        testl $1, 8(%ebx)               /* KVM_CPUID_FLAG_SIGNIFCANT_INDEX */
        jz 3f
        cmpl 4(%ebx), %edx
        je 3f
2:      addl $28, %ebx
        decl %ecx
        jnz 1b
        xorl %eax, %eax
        movl %eax, SW_REGS + 0
        movl %eax, SW_REGS + 4
        movl %eax, SW_REGS + 8
        movl %eax, SW_REGS + 12
        jmp 4f
3:      movl 12(%ebx), %eax
        movl %eax, SW_REGS + 0
        movl 16(%ebx), %eax
        movl %eax, SW_REGS + 4
        movl 20(%ebx), %eax
        movl %eax, SW_REGS + 8
        movl 24(%ebx), %eax
        movl %eax, SW_REGS + 12
4:      addl $2, SW_REGS + 52
        incl SW_FAST_GPS
        jmp restore

/* ---- A system call through an interrupt gate: the guest's handler, interrupts off ---- */
fast_syscall:
        movl SW_FAST_SYS_HANDLER, %ebx
        testl %ebx, %ebx
        jz exit_to_host
        movl $1, %ebp
        xorl %ecx, %ecx
        call fast_deliver
        incl SW_FAST_SYSCALLS
        jmp restore

/*
 * ---- With the LAPIC in KVM: hypercalls, interrupts and the tick ----
 * eax = the trap number. An interrupt from the LAPIC must be acknowledged
 * (EOI) here, as only we can; spurious ones need none, and the system-call
 * vector and CPU exceptions are not interrupts.
 */
apic_dispatch:
        cmpl $32, %eax
        jb exit_to_host
        cmpl $SYSCALL_VECTOR, %eax
        je exit_to_host
        cmpl $SW_SPURIOUS_VECTOR, %eax
        je exit_to_host
        call apic_eoi
        cmpl $SW_TIMER_VECTOR, SW_REGS + 44
        jne exit_to_host                /* the kick: Python delivers */
        movl $1, SW_CLK_PENDING
        jmp fast_tick

/*
 * SET_CLOCKEVENT, HALT and SET_PTE, when nothing else needs Python: no
 * queued async hypercalls (Python runs those first, in order) and no
 * interrupt Python or the clock could deliver now (Python would deliver it
 * at this exit). Anything else (and every other call) goes to Python.
 */
fast_hypercall:
        cmpl $0, SW_HCALL_ON
        je exit_to_host
        cmpl $0, SW_EMERG_N             /* console bytes gathered: HALT (an */
        je 0f                           /* idle guest's every next move) */
        cmpl $LHCALL_HALT, SW_REGS + 0  /* exits, so Python writes them out */
        je exit_to_host
0:
        movl SW_HCALL_NEXT, %ecx
        andl $LHCALL_RING_SIZE - 1, %ecx
        addl SW_HSTATUS_AT, %ecx
        cmpb $0xFF, (%ecx)              /* window: cannot fault */
        jne exit_to_host
        movl SW_BLOCKED_AT, %edi
        movl (%edi), %ecx
        notl %ecx                       /* ecx: the unmasked IRQs */
        movl SW_REGS + 0, %eax          /* the call number */
        testl SW_HOST_PENDING, %ecx
        jnz 2f
        testl SW_CLK_PENDING, %ecx
        jz 1f
        /* IRQ 0 held back (the clock fired with interrupts off): HALT is
           "sti; hlt", so it is delivered now, as Python would at this
           exit; so is SEND_INTERRUPTS, the guest asking for it (Python's
           handler does nothing but deliver). fast_tick checks the rest. */
        cmpl $LHCALL_HALT, %eax
        jne 4f
        incl SW_FAST_HALTS
        movl $1, SW_HALTED
        jmp fast_tick
4:      movl SW_SENDINT_CALL, %edx
        testl %edx, %edx
        jz 3f                           /* this generation has no such call */
        cmpl %edx, %eax
        jne 3f
        incl SW_FAST_SENDS
        jmp fast_tick
2:      cmpl $LHCALL_HALT, %eax         /* Python's IRQ: HALT takes it there */
        je exit_to_host
        /* An IRQ the guest cannot take yet: its interrupts are off and it
           has been asked for SEND_INTERRUPTS (irq_pending). Python would
           deliver nothing at this exit, so SET_CLOCKEVENT and SET_PTE may
           go on; otherwise Python delivers. */
3:      cmpl $0, SW_CLK_ON              /* SW_IRQPEND_AT is published */
        je exit_to_host
        movl SW_FAST_IRQ_AT, %edi
        testl $EFLAGS_IF, (%edi)
        jnz exit_to_host
        movl SW_IRQPEND_AT, %edi
        cmpl $0, (%edi)
        je exit_to_host
1:      cmpl $LHCALL_SET_PTE, %eax
        je fast_set_pte
        cmpl $0, SW_CLK_ON
        je exit_to_host
        cmpl $LHCALL_SET_CLOCKEVENT, %eax
        je fast_clockevent
        cmpl $LHCALL_HALT, %eax
        jne exit_to_host
        incl SW_FAST_HALTS
        jmp halt_now

/* SET_PTE(top, vaddr, low, high): see SW_PTE_MODE above. */
fast_set_pte:
        movl SW_PTE_MODE, %ebp
        testl %ebp, %ebp
        jz exit_to_host
        movl SW_REGS + 8, %edi          /* ecx: the virtual address */
        cmpl $SW_BASE, %edi
        jae exit_to_host                /* Python refuses it */
        movl SW_REGS + 12, %eax         /* edx: the entry (its low word) */
        testl $PTE_P, %eax
        jz 2f
        testl $PTE_PS, %eax
        jnz exit_to_host
        cmpl $2, %ebp
        jne 1f
        testl $0x000FFFFF, SW_REGS + 16 /* esi, PAE: a frame above 4 GiB */
        jnz exit_to_host
1:      andl $0xFFFFF000, %eax
        cmpl SW_PTE_LIMIT, %eax
        jae exit_to_host
2:      movl SW_REGS + 4, %eax          /* ebx: the table's top */
        cmpl SW_PT_CR3, %eax
        je 3f
        cmpl SW_KERNEL_ADDR, %edi
        jb 4f
3:      invlpg (%edi)
4:      incl SW_FAST_PTES
        jmp restore

fast_clockevent:
        movl SW_REGS + 4, %eax          /* ebx: nanoseconds from now; 0 stops it */
        testl SW_CLK_PENDING, %ecx      /* ecx: the unmasked IRQs */
        jz 1f
        /* IRQ 0 still waits for the guest: look again within 2 ms, as
           ClockInVm.hand_back has Python do. */
        testl %eax, %eax
        jz 2f
        cmpl $HELD_BACK_NS, %eax
        jbe 1f
2:      movl $HELD_BACK_NS, %eax
1:      call apic_arm
        incl SW_FAST_CLOCKEVENTS
        jmp restore

/*
 * HALT is "sti; hlt" for the guest: sleep until an interrupt. The one that
 * wakes us arrives through its stub at ring 0 with eip = halt_woken, so
 * switcher_fault sends it to halt_wake. It may also arrive with eip =
 * halt_insn, before the `hlt`: sti's one-instruction shadow is not always
 * honoured when an interrupt was already pending (seen under nested SVM).
 * esp is SW_REGS: the wake-up's frame goes below the guest's saved registers.
 */
halt_now:
        movl $1, SW_HALTED
        sti
halt_insn:
        hlt
halt_woken:
        cli                             /* not reached: see halt_wake */
        jmp halt_now

halt_wake:
        movl (%esp), %eax               /* the vector that woke us */
        movl $SW_REGS, %esp             /* drop the ring-0 frame */
        movl %eax, SW_REGS + 44         /* Python sees what woke the guest, not HALT */
        cmpl $SW_SPURIOUS_VECTOR, %eax
        je exit_to_host                 /* SW_HALTED tells Python to halt again */
        call apic_eoi
        cmpl $SW_TIMER_VECTOR, SW_REGS + 44
        jne exit_to_host                /* a kick: Python delivers, as a halted guest */
        movl $1, SW_CLK_PENDING
        /* fall through */

/*
 * IRQ 0 is pending (SW_CLK_PENDING): deliver it as Interrupts.deliver
 * would, or hold it back while the guest's interrupts are off (asking for
 * SEND_INTERRUPTS and looking again in 2 ms, as Python's clock thread
 * does), or leave for Python in every less common case.
 */
fast_tick:
        cmpl $0, SW_CLK_ON
        je exit_to_host
        movl SW_TICK_HANDLER, %ebx
        testl %ebx, %ebx
        jz exit_to_host                 /* no gate 32 yet */
        movl SW_BLOCKED_AT, %edi
        testl $1, (%edi)
        jnz exit_to_host                /* IRQ 0 masked */
        movl SW_REGS + 52, %eax         /* the guest's eip */
        cmpl SW_NOIRQ_IRET, %eax
        je exit_to_host
        cmpl SW_NOIRQ_START, %eax
        jb 1f
        cmpl SW_NOIRQ_END, %eax
        jb exit_to_host                 /* in the iret window: Python waits */
1:      movl SW_FAST_IRQ_AT, %edi
        cmpl $0, SW_HALTED
        je 2f
        movl $EFLAGS_IF, (%edi)         /* waking from HALT turns interrupts on */
        jmp 3f
2:      testl $EFLAGS_IF, (%edi)
        jnz 3f
        movl SW_IRQPEND_AT, %edi        /* held back */
        movl $EFLAGS_IF, (%edi)
        movl $HELD_BACK_NS, %eax
        call apic_arm
        jmp restore
3:      movl SW_TICK_IGATE, %ebp
        xorl %ecx, %ecx
        call fast_deliver
        movl $0, SW_CLK_PENDING
        movl $0, SW_HALTED
        incl SW_FAST_TICKS
        call write_time
        movl SW_BLOCKED_AT, %edi        /* nothing else deliverable: irq_pending off */
        movl (%edi), %ecx
        notl %ecx
        testl SW_HOST_PENDING, %ecx
        jnz restore
        movl SW_IRQPEND_AT, %edi
        movl $0, (%edi)
        jmp restore

/*
 * lguest_data.time = the wall clock, as Host.set_wallclock writes it at
 * every delivery: SW_NS_BASE + (tsc - SW_TSC_BASE) * SW_TSC_MULT >> 24,
 * split into seconds and nanoseconds. A TSC gone backwards or a base from
 * a far future would not fit the division: then the time is left alone.
 */
write_time:
        rdtsc
        subl SW_TSC_BASE, %eax
        sbbl SW_TSC_BASE + 4, %edx
        js 9f
        movl %edx, %ecx                 /* delta = ecx:eax */
        mull SW_TSC_MULT                /* low word * mult */
        shrdl $24, %edx, %eax
        shrl $24, %edx
        movl %eax, %esi                 /* edi:esi = that >> 24 */
        movl %edx, %edi
        movl %ecx, %eax
        mull SW_TSC_MULT                /* high word * mult, << 32 >> 24 */
        shldl $8, %eax, %edx
        shll $8, %eax
        addl %eax, %esi
        adcl %edx, %edi
        addl SW_NS_BASE, %esi
        adcl SW_NS_BASE + 4, %edi
        movl $NSEC_PER_SEC, %ecx
        cmpl %ecx, %edi
        jae 9f                          /* the quotient would not fit */
        movl %esi, %eax
        movl %edi, %edx
        divl %ecx                       /* eax = seconds, edx = nanoseconds */
        movl SW_TIME_AT, %edi
        movl %eax, (%edi)
        movl %edx, 4(%edi)
9:      ret

/* The LAPIC, in x2APIC mode: MSRs, which KVM handles without leaving the kernel. */
apic_eoi:
        movl $MSR_X2APIC_EOI, %ecx
        xorl %eax, %eax
        xorl %edx, %edx
        wrmsr
        ret

apic_arm:                               /* eax = nanoseconds; 0 stops the timer */
        movl $MSR_X2APIC_TMICT, %ecx
        xorl %edx, %edx
        wrmsr
        ret

/* The fast path cannot finish: take the ordinary exit, frame intact. */
fast_abort:
        movl $0, SW_FAST_BUSY
        movl $SW_REGS, %esp
        outb %al, $SW_EXIT_PORT
        jmp switcher_resume

switcher_fault:
        movl $LGUEST_DS, %eax       /* ds may be the bad selector */
        movl %eax, %ds
        movl %eax, %es
        cmpl $halt_woken, 8(%esp)   /* an interrupt ended our HALT */
        je 12f
        cmpl $halt_insn, 8(%esp)    /* ... or came just before the hlt */
        jne 11f
12:     cmpl $32, (%esp)
        jae halt_wake
11:     cmpl $0, SW_FAST_BUSY       /* a guest-stack store of the fast path */
        jne fast_abort
        popl %eax
        movl %eax, SW_FAULT_VECTOR
        popl %eax
        movl %eax, SW_FAULT_ERRCODE
        popl %eax
        movl %eax, SW_FAULT_EIP
        movl $1, SW_FAULT_VALID
        movl $SW_REGS, %esp         /* a known stack, whatever we were doing */
10:     outb %al, $SW_FAULT_PORT
        hlt                         /* Python never resumes a faulted Switcher */
        jmp 10b

/*
 * The exit floor for launcher-bench: nothing but exits. Python starts the
 * vCPU here at ring 0 and KVM_RUNs it repeatedly.
 */
bench_out_loop:
        outb %al, $SW_EXIT_PORT
        jmp bench_out_loop

switcher_end:
        /* The code must stay below the GDT page (checked again by Python). */
        .org SW_GDT - SW_BASE, 0xCC
