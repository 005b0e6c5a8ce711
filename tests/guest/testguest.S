/*
 * testguest.S - the tiny freestanding i386 guest the foundation tests boot.
 *
 * It starts at ring 1 in linear mode (lguest-abi.md §1.4-1.5), with no
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

        .globl do_pf, pf_insn
do_pf:
        START
pf_insn:
        movl 0x80000000, %eax
        jmp fail

        .globl syscall_loop
syscall_loop:
        START
        /* A trap gate, DPL 3, for vector 0x80: the Host may send it direct. */
        movl $LHCALL_LOAD_IDT_ENTRY, %eax
        movl $0x80, %ebx
        movl $sys_handler, %ecx
        andl $0xffff, %ecx
        orl $0x00610000, %ecx
        movl $sys_handler, %edx
        andl $0xffff0000, %edx
        orl $0xef00, %edx
        int $0x1f
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
        movl $LHCALL_LOAD_IDT_ENTRY, %eax
        movl $6, %ebx
        movl $ud_handler, %ecx
        andl $0xffff, %ecx
        orl $0x00610000, %ecx
        movl $ud_handler, %edx
        andl $0xffff0000, %edx
        orl $0x8e00, %edx
        int $0x1f
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
/* lguest_data, G2 layout (lguest-abi.md §4), as a guest initializes it. */
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
