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

        .set GUEST_CS_SEL,  (12 * 8) | 1
        .set EFLAGS_IF,     0x200
        .set EFLAGS_CLEAR,  0x100 | 0x4000 | 0x10000 | 0x20000   /* TF NT RF VM */

        .globl REQ_LOAD_CR3, REQ_FLUSH, REQ_INVLPG, REQ_SET_TS, REQ_CLEAR_TS, REQ_ENABLE_PAE
        .set REQ_LOAD_CR3,   0x01   /* mov SW_REQ_CR3 -> cr3 (flushes non-global) */
        .set REQ_FLUSH,      0x02   /* reload cr3: with CR4.PGE off this drops all */
        .set REQ_INVLPG,     0x04   /* invlpg each of SW_REQ_INVLPG[0..n) */
        .set REQ_SET_TS,     0x08
        .set REQ_CLEAR_TS,   0x10
        .set REQ_ENABLE_PAE, 0x20   /* paging off, CR4.PAE on (PSE off), cr3, paging on */

        .set CR0_PG, 0x80000000
        .set CR0_TS, 0x00000008
        .set CR4_PSE, 0x00000010
        .set CR4_PAE, 0x00000020

        .text
        .globl switcher_entries, switcher_common, switcher_resume
        .globl restore_gs, restore_fs, restore_ds, restore_es, restore_iret
        .globl switcher_fault, bench_out_loop, fast_page_fault

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
        /* Python needs cr2 for a page fault; only the Switcher can read it. */
        cmpl $14, 44(%esp)
        jne 1f
        movl %cr2, %eax
        movl %eax, SW_EXIT_CR2
        cmpl $0, SW_FAST_ON
        jne fast_page_fault
1:      outb %al, $SW_EXIT_PORT
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
        testl $REQ_ENABLE_PAE, %ebx
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
        jz restore
        clts
        jmp restore

/*
 * ---- Reflecting a page fault without leaving the VM ----
 * What Traps.deliver does in Python, for #PF only: cr2 into lguest_data,
 * then the frame the CPU would have pushed for a gate to the guest's
 * handler (ring 3: onto the ring-1 stack, old ss:esp first; eflags.IF
 * mirroring irq_enabled; the error code last), and iret into the handler.
 * Only the guest-stack stores can fault (a hostile or broken guest's
 * stack): SW_FAST_BUSY makes such a fault abandon the fast path and leave
 * through the ordinary exit with the frame untouched, so Python decides.
 * Registers: esi = new guest esp, edx = its ss.
 */
fast_page_fault:
        movl SW_FAST_CR2_AT, %edi
        movl %eax, (%edi)               /* lguest_data.cr2 (window: cannot fault) */
        movl $1, SW_FAST_BUSY
        testl $2, 56(%esp)              /* cs RPL 3 (not 1): from user mode */
        jz 2f
        movl SW_FAST_ESP1, %esi
        testl %esi, %esi
        jz fast_abort                   /* no ring-1 stack yet */
        movl SW_FAST_SS1, %edx
        movl 68(%esp), %eax             /* the old ss and esp go first */
        movl %eax, -4(%esi)
        movl 64(%esp), %eax
        movl %eax, -8(%esi)
        subl $8, %esi
        jmp 3f
2:      movl 64(%esp), %esi
        movl 68(%esp), %edx
3:      movl 60(%esp), %eax
        movl SW_FAST_IRQ_AT, %edi
        testl $EFLAGS_IF, (%edi)
        jnz 4f
        andl $~EFLAGS_IF, %eax
4:      movl %eax, -4(%esi)             /* eflags */
        movl 56(%esp), %eax
        movl %eax, -8(%esi)             /* cs */
        movl 52(%esp), %eax
        movl %eax, -12(%esi)            /* eip */
        movl 48(%esp), %eax
        movl %eax, -16(%esi)            /* error code */
        subl $16, %esi
        /* Every store landed: from here nothing can fault. */
        movl $0, SW_FAST_BUSY
        movl %esi, 64(%esp)
        movl %edx, 68(%esp)
        movl $GUEST_CS_SEL, 56(%esp)
        movl SW_FAST_HANDLER, %eax
        movl %eax, 52(%esp)
        andl $~EFLAGS_CLEAR, 60(%esp)
        cmpl $0, SW_FAST_IGATE
        je 5f
        movl $0, (%edi)                 /* an interrupt gate: irq_enabled = 0 */
5:      incl SW_FAST_COUNT
        jmp restore

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
        cmpl $0, SW_FAST_BUSY       /* a guest-stack store of the fast path */
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
