/*
 * testguest.S - the tiny freestanding i386 guest the foundation tests boot.
 *
 * It starts at ring 1 in linear mode (docs/abi.md §1.4-1.5), with no
 * lguest_data yet. Each test starts it at one of the global labels below; ebp
 * carries the test's parameter (an iteration count). It talks to the test's
 * Host through hypercalls numbered from 100, which only the tests register.
 */
        .set TEST_ECHO,    100   /* ebx=i ecx=~i edx=3i esi=i^0x5a5a5a5a */
        .set TEST_DONE,    101   /* ebx, ecx, edx: results */
        .set TEST_FAIL,    102   /* ebx: what failed */
        .set TEST_CORRUPT, 103   /* the Host corrupts our saved state */
        .set LHCALL_LGUEST_INIT, 1
        .set LHCALL_LOAD_IDT_ENTRY, 6
        .set LHCALL_FLUSH_ASYNC, 0

/* LOAD_IDT_ENTRY(vector, a gate to handler): flags are the gate's high
   half below the address (0x8e00 interrupt gate DPL 0, 0xef00 trap DPL 3). */
        .macro LOAD_GATE vector, handler, flags
        movl $LHCALL_LOAD_IDT_ENTRY, %eax
        movl $\vector, %ebx
        movl $\handler, %ecx
        andl $0xffff, %ecx
        orl $0x00610000, %ecx
        movl $\handler, %edx
        andl $0xffff0000, %edx
        orl $\flags, %edx
        int $0x1f
        .endm

/* Every scenario starts here: a stack, then LGUEST_INIT as a real guest does. */
        .macro START
        movl $stack_top, %esp
        movl $LHCALL_LGUEST_INIT, %eax
        movl $lguest_data, %ebx
        int $0x1f
        .endm

        .code32
        .text

        .globl hcall_loop
hcall_loop:
        START
        xorl %edi, %edi
1:      incl %edi
        movl $TEST_ECHO, %eax
        movl %edi, %ebx
        movl %edi, %ecx
        notl %ecx
        leal (%edi,%edi,2), %edx
        movl %edi, %esi
        xorl $0x5a5a5a5a, %esi
        int $0x1f
        /* A hypercall must leave every register as it was. */
        cmpl $TEST_ECHO, %eax
        jne fail
        cmpl %edi, %ebx
        jne fail
        notl %ecx
        cmpl %edi, %ecx
        jne fail
        xorl $0x5a5a5a5a, %esi
        cmpl %edi, %esi
        jne fail
        cmpl %ebp, %edi
        jne 1b
        movl $TEST_DONE, %eax
        movl %edi, %ebx
        int $0x1f
        jmp fail

        .globl do_io, in_insn, out_insn, in_dx_insn
do_io:
        START
        movl $0x12345600, %eax
in_insn:
        inb $0x60, %al
        cmpl $0x123456ff, %eax
        jne fail
out_insn:
        outb %al, $0x80
        movw $0x3f8, %dx
in_dx_insn:
        inl (%dx), %eax
        cmpl $0xffffffff, %eax
        jne fail
        movl $TEST_DONE, %eax
        int $0x1f
        jmp fail

/* ebp characters out through the console's PCI_CFG window, as Linux 4.x's
   early console prints them: per character three configuration writes set
   the window (bar, length, offset: the emergency-write register) and a
   fourth writes the character; each is an outl of the address to 0xCF8
   and an out to the data port. Then the window's offset is read back. */
        .set CFG_SLOT1, 0x80000000 | (1 << 11)   /* bus 0, slot 1 (the console) */
        .set EMERG_WR, 60 + 8                    /* BAR0: device config + 8 */
        .macro CFG_ADDR reg
        movl $(CFG_SLOT1 | \reg), %eax
        movw $0xcf8, %dx
        outl %eax, %dx
        .endm
        .globl pci_console
pci_console:
        START
        xorl %edi, %edi
1:      CFG_ADDR 0x88                   /* bar: one byte */
        xorl %eax, %eax
        movw $0xcfc, %dx
        outb %al, %dx
        CFG_ADDR 0x90                   /* length */
        movl $4, %eax
        movw $0xcfc, %dx
        outl %eax, %dx
        CFG_ADDR 0x8c                   /* offset */
        movl $EMERG_WR, %eax
        movw $0xcfc, %dx
        outl %eax, %dx
        CFG_ADDR 0x94                   /* the data: the character goes out */
        movl %edi, %eax
        andl $15, %eax
        addl $0x41, %eax
        cmpl $64, %edi                  /* the first four lines end in '\n' */
        jae 2f
        cmpl $0x50, %eax
        jne 2f
        movl $0x0A, %eax
2:      movw $0xcfc, %dx
        outl %eax, %dx
        incl %edi
        cmpl %ebp, %edi
        jne 1b
        CFG_ADDR 0x8c
        movw $0xcfc, %dx
        inl (%dx), %eax
        movl %eax, %ebx
        movl %edi, %ecx
        movl $TEST_DONE, %eax
        int $0x1f
        jmp fail

        .globl do_pf, pf_insn
do_pf:
        START
pf_insn:
        movl 0x80000000, %eax
        jmp fail

/* ebp page faults the guest handles itself: the handler checks what it
   was given (cr2 in lguest_data, error code, eip, IF in the pushed eflags
   mirroring irq_enabled, irq_enabled cleared by its interrupt gate) and
   points ebx at good memory, so the faulting load succeeds when retried. */
        .globl pf_loop, pf_loop_insn
pf_loop:
        START
        LOAD_GATE 14, pf_handler, 0x8e00
        xorl %edi, %edi
1:      movl $0x200, lguest_data    /* irq_enabled: "on" */
        movl $0x80000000, %ebx
pf_loop_insn:
        movl (%ebx), %eax
        cmpl %ebp, %edi
        jb 1b
        movl $TEST_DONE, %eax
        movl %edi, %ebx
        movl lguest_data + 8, %ecx  /* cr2 as the Host left it */
        movl lguest_data, %edx      /* irq_enabled after the last fault */
        int $0x1f
        jmp fail
pf_handler:
        cmpl $0x80000000, lguest_data + 8
        jne fail
        cmpl $0, lguest_data        /* the interrupt gate turned irqs off */
        jne fail
        popl %eax                   /* error code: a read, not present, ring 1 */
        testl %eax, %eax
        jne fail
        cmpl $pf_loop_insn, (%esp)
        jne fail
        cmpl $0x61, 4(%esp)
        jne fail
        testl $0x200, 8(%esp)       /* IF as irq_enabled was */
        jz fail
        incl %edi
        movl $lguest_data, %ebx
        iret

/* A fault whose frame cannot be pushed: the stack points nowhere. */
        .globl pf_bad_stack
pf_bad_stack:
        START
        LOAD_GATE 14, pf_handler, 0x8e00
        movl $0x90000000, %esp
        movl 0x80000000, %eax
        jmp fail

        .globl syscall_loop
syscall_loop:
        START
        /* A trap gate, DPL 3, for vector 0x80: the Host may send it direct. */
        LOAD_GATE 0x80, sys_handler, 0xef00
        xorl %edi, %edi
1:      int $0x80
        cmpl %ebp, %edi
        jne 1b
        movl $TEST_DONE, %eax
        movl %edi, %ebx
        int $0x1f
        jmp fail
sys_handler:
        incl %edi
        iret

        .globl deliver_ud, ud_insn
deliver_ud:
        START
        /* An interrupt gate for #UD: always through the Host, never direct. */
        LOAD_GATE 6, ud_handler, 0x8e00
ud_insn:
        ud2
        jmp fail
ud_handler:
        movl (%esp), %ebx           /* the faulting eip */
        movl 4(%esp), %ecx          /* cs */
        movl %esp, %edx
        movl $TEST_DONE, %eax
        int $0x1f
        jmp fail

        .globl spin, spin_end
spin:
        START
        xorl %esi, %esi
1:      incl %esi
        jmp 1b
spin_end:

        .globl corrupt
corrupt:
        START
        movl $TEST_CORRUPT, %eax
        int $0x1f
        jmp fail

        .globl bench_hcall
bench_hcall:
        START
        rdtsc
        movl %eax, %esi
        movl %edx, %edi
        movl %ebp, %ecx
1:      movl $LHCALL_FLUSH_ASYNC, %eax   /* a null hypercall */
        int $0x1f
        decl %ecx
        jnz 1b
        rdtsc
        subl %esi, %eax
        sbbl %edi, %edx
        movl %eax, %ebx
        movl %edx, %ecx
        movl $TEST_DONE, %eax
        int $0x1f
        jmp fail

fail:
        movl $TEST_FAIL, %eax
        movl (%esp), %ebx
        int $0x1f
1:      jmp 1b

        .data
/* lguest_data, G2 layout (docs/abi.md §4), as a guest initializes it. */
        .balign 4
lguest_data:
        .long 0                     /* irq_enabled */
        .long 1                     /* blocked_interrupts */
        .fill 16, 1, 0              /* cr2, time, irq_pending */
        .fill 64, 1, 0xff           /* hcall_status: all free */
        .fill 1280, 1, 0            /* hcalls */
        .long 0, 0                  /* reserve_mem, tsc_khz */
        .long 0, 0                  /* noirq_start, noirq_end */
        .long 0xC0000000            /* kernel_address */
        .long 0x80                  /* syscall_vec */

        .bss
        .balign 4096
        .space 8192
stack_top:

/* ------------------------------------------------------------------------
 * The Host's duties (the lguest Host issue): page tables, time, interrupts,
 * the async ring. Each scenario reports through TEST_DONE or TEST_FAIL.
 * ------------------------------------------------------------------------ */
        .set LHCALL_NEW_PGTABLE, 4
        .set LHCALL_SET_CLOCKEVENT, 9
        .set LHCALL_HALT, 10
        .set LHCALL_SET_PTE, 14
        .set LHCALL_SET_PGD, 15
        .set LHCALL_FLUSH_TLB, 5
        .set LD_IRQ_ENABLED, 0
        .set LD_BLOCKED, 4
        .set LD_CR2, 8
        .set LD_IRQ_PENDING, 20
        .set LD_HCALL_STATUS, 24
        .set LD_HCALLS, 88
        .set LD_NOIRQ_START, 1376
        .set LD_NOIRQ_END, 1380
        .set TEST_VADDR, 0x40000000
        .set PAGE_X, 0x200000           /* two pages the test maps at TEST_VADDR */
        .set PAGE_Y, 0x201000

/* Load the tables at \top, check TEST_VADDR reads \expect through them (and
   so sits in the TLB), then remap it to PAGE_Y and tell the Host with
   SET_PTE: the stale TLB entry must go, or the next read sees the old page. */
        .macro SWITCH_AND_REMAP top, expect
        movl $LHCALL_NEW_PGTABLE, %eax
        movl $\top, %ebx
        int $0x1f
        cmpl $\expect, TEST_VADDR
        jne fail
        movl $(PAGE_Y | 0x3), pt1
        movl $LHCALL_SET_PTE, %eax
        movl $\top, %ebx
        movl $TEST_VADDR, %ecx
        movl $(PAGE_Y | 0x3), %edx
        xorl %esi, %esi
        int $0x1f
        .endm

        .text
/* Non-PAE tables: identity-map the first 4 MiB, and TEST_VADDR -> PAGE_X. */
        .globl paging, remap_done
paging:
        START
        movl $0x11111111, PAGE_X
        movl $0x22222222, PAGE_Y
        /* pt0: identity for 0-4 MiB, P|RW */
        movl $pt0, %edi
        xorl %eax, %eax
1:      movl %eax, %edx
        shll $12, %edx
        orl $0x3, %edx
        movl %edx, (%edi,%eax,4)
        incl %eax
        cmpl $1024, %eax
        jne 1b
        movl $pt0, %eax
        orl $0x3, %eax
        movl %eax, pgdir
        movl $(PAGE_X | 0x3), pt1
        movl $pt1, %eax
        orl $0x3, %eax
        movl %eax, pgdir + 4 * (TEST_VADDR >> 22)
        SWITCH_AND_REMAP pgdir, 0x11111111
        cmpl $0x22222222, TEST_VADDR
        jne fail
remap_done:
        /* A trap with the new tables: the Host must walk them to push. */
        LOAD_GATE 6, ud_handler, 0x8e00
        ud2
        jmp fail

/* PAE tables: PDPT[0] -> pmd0 (0-1 GiB), PDPT[1] -> pmd1 (TEST_VADDR),
   PDPT[3] -> pmd3 (where the Host puts the Switcher, slot 510). */
        .globl paging_pae
paging_pae:
        START
        movl $0x33333333, PAGE_X
        movl $0x44444444, PAGE_Y
        movl $pt0, %edi                 /* 512 8-byte PTEs: 0-2 MiB */
        xorl %eax, %eax
1:      movl %eax, %edx
        shll $12, %edx
        orl $0x3, %edx
        movl %edx, (%edi,%eax,8)
        movl $0, 4(%edi,%eax,8)
        incl %eax
        cmpl $512, %eax
        jne 1b
        movl $pt0, %eax
        orl $0x3, %eax
        movl %eax, pmd0
        movl $(PAGE_X | 0x3), pt1
        movl $pt1, %eax
        orl $0x3, %eax
        movl %eax, pmd1
        movl $pmd0, %eax
        orl $1, %eax
        movl %eax, pdpt
        movl $pmd1, %eax
        orl $1, %eax
        movl %eax, pdpt + 8
        movl $pmd3, %eax
        orl $1, %eax
        movl %eax, pdpt + 24
        SWITCH_AND_REMAP pdpt, 0x33333333
        cmpl $0x44444444, TEST_VADDR
        jne fail
        movl $TEST_DONE, %eax
        movl TEST_VADDR, %ebx
        int $0x1f
        jmp fail

/* The timer: interrupts on, a clock event, HALT until it fires; n times. */
        .globl timer_halt
timer_halt:
        START
        call install_timer
        xorl %edi, %edi
1:      movl $0x200, lguest_data + LD_IRQ_ENABLED
        movl $LHCALL_SET_CLOCKEVENT, %eax
        movl $5000000, %ebx             /* 5 ms */
        int $0x1f
        movl $LHCALL_HALT, %eax
        int $0x1f
        incl %edi
        cmpl %edi, ticks
        jne fail
        cmpl %ebp, %edi
        jne 1b
        movl $TEST_DONE, %eax
        movl ticks, %ebx
        int $0x1f
        jmp fail

/* An IRQ held back by irq_enabled == 0, then interrupts re-enabled by a
   plain store, as Linux's irq_enable does: only the Host's periodic kick
   can deliver it now. */
        .globl held_back
held_back:
        START
        call install_timer
        movl $0, lguest_data + LD_IRQ_ENABLED
        movl $LHCALL_SET_CLOCKEVENT, %eax
        movl $1000000, %ebx             /* 1 ms */
        int $0x1f
1:      cmpl $0x200, lguest_data + LD_IRQ_PENDING
        jne 1b                          /* spins until the Host has held it back */
        movl $0x200, lguest_data + LD_IRQ_ENABLED
2:      cmpl $0, ticks
        je 2b
        movl $TEST_DONE, %eax
        movl ticks, %ebx
        movl lguest_data + LD_IRQ_PENDING, %ecx
        int $0x1f
        jmp fail

install_timer:
        LOAD_GATE 32, timer_handler, 0x8e00
        movl $noirq_start, lguest_data + LD_NOIRQ_START
        movl $noirq_end, lguest_data + LD_NOIRQ_END
        movl $0, lguest_data + LD_BLOCKED
        ret

/* Like Linux's lguest_iret: restore the virtual IF from the stacked eflags,
   then iret; an interrupt between the two would nest, hence the window. */
timer_handler:
        incl ticks
        pushl %eax
        movl 12(%esp), %eax
        andl $0x200, %eax
noirq_start:
        movl %eax, lguest_data + LD_IRQ_ENABLED
        popl %eax
        iret
noirq_end:

/* Queue LOAD_IDT_ENTRY(3, trap gate DPL 3) in the async ring, flush, and
   take int3 straight to the handler. */
        .globl async_ring
async_ring:
        START
        movl $lguest_data + LD_HCALLS, %edi
        movl $LHCALL_LOAD_IDT_ENTRY, (%edi)
        movl $3, 4(%edi)
        movl $bp_handler, %eax
        andl $0xffff, %eax
        orl $0x00610000, %eax
        movl %eax, 8(%edi)
        movl $bp_handler, %eax
        andl $0xffff0000, %eax
        orl $0xef00, %eax
        movl %eax, 12(%edi)
        movb $0, lguest_data + LD_HCALL_STATUS
        movl $LHCALL_FLUSH_ASYNC, %eax
        int $0x1f
        cmpb $0xff, lguest_data + LD_HCALL_STATUS
        jne fail
        int3
        jmp fail
bp_handler:
        movzbl lguest_data + LD_HCALL_STATUS, %ecx
        movl $TEST_DONE, %eax
        movl $0xb9, %ebx
        int $0x1f
        jmp fail

        .data
ticks:  .long 0

        .bss
        .balign 4096
pgdir:  .space 4096
pt0:    .space 4096
pt1:    .space 4096
pmd0:   .space 4096
pmd1:   .space 4096
pmd3:   .space 4096
        .balign 32
pdpt:   .space 32
