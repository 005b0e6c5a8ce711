/*
 * entry.S - the ways into and out of the kernel: trap and interrupt stubs,
 * the common entry and exit, the lguest iret, the context switch, and two
 * helpers whose faults the tests provoke on purpose.
 *
 * How we get here. A trap or interrupt reaches one of the stubs below either
 * straight from the CPU (a "direct trap": the Host put our trap gate into
 * the real IDT, e.g. int $0x80 or int3) or from the Host, which pushed the
 * same frame onto our stack as the CPU would have (docs/abi.md §6.4).
 * Either way the stack holds, from the top: [ss esp] if we came from ring 3,
 * eflags, cs, eip, and for vectors 8, 10-14 and 17 an error code.
 */
#include "lguest.h"

#define KERNEL_DS 0x69

/* One stub per vector: make the frame uniform (a 0 where the CPU pushed no
   error code), push the vector number, go to the common code. The stubs'
   addresses go into trap_stubs[], which traps.c hands to LOAD_IDT_ENTRY. */
	.macro STUB vector
	.text
	.balign 8
1:	.if (\vector == 8) || (\vector >= 10 && \vector <= 14) || (\vector == 17)
	.else
	pushl $0
	.endif
	pushl $\vector
	jmp trap_common
	.section .rodata
	.long 1b
	.endm

	.section .rodata
	.balign 4
	.globl trap_stubs
trap_stubs:                             /* vectors 0-63, then 0x80 */
	.set v, 0
	.rept 64
	STUB v
	.set v, v + 1
	.endr
	STUB 0x80

/*
 * The common entry. Save the general registers and the data segments into a
 * struct regs (lgk.h), load our own data segments (what user space left in
 * ds/es cannot be trusted; fs and gs are 0 in the kernel, so the TLS entries
 * can change under us), and call trap_dispatch(regs).
 */
	.text
trap_common:
	cld
	pushl %gs
	pushl %fs
	pushl %es
	pushl %ds
	pushl %eax
	pushl %ebp
	pushl %edi
	pushl %esi
	pushl %edx
	pushl %ecx
	pushl %ebx
	movl $KERNEL_DS, %eax
	movl %eax, %ds
	movl %eax, %es
	xorl %eax, %eax
	movl %eax, %fs
	movl %eax, %gs
	pushl %esp
	call trap_dispatch
	addl $4, %esp
	/* fall through */
	.globl ret_from_trap
ret_from_trap:
	popl %ebx
	popl %ecx
	popl %edx
	popl %esi
	popl %edi
	popl %ebp
	popl %eax
	popl %ds
	popl %es
	popl %fs
	popl %gs
	addl $8, %esp                         /* vector and error code */
	/* fall through */

/*
 * lguest_iret: leave the kernel with a real iret. At ring 1 the CPU ignores
 * the IF bit iret pops, so the interrupt flag we are restoring is the
 * virtual one: copy the IF bit of the stacked eflags into irq_enabled first.
 *
 * From the moment that store has happened, the Host must not deliver an
 * interrupt here, or a storm of interrupts would each nest one frame deeper
 * on this stack. The Host learns the window [lguest_noirq_start,
 * lguest_noirq_end) from lguest_data and leaves such interrupts pending
 * until we are out. ds may already hold user space's selector: address
 * lguest_data through ss.
 */
	.globl lguest_iret, lguest_noirq_start, lguest_noirq_end
lguest_iret:
	pushl %eax
	movl 12(%esp), %eax                   /* eflags, above eax, eip and cs */
	andl $0x200, %eax                     /* X86_EFLAGS_IF */
lguest_noirq_start:
	movl %eax, %ss:lguest_data + LGUEST_DATA_irq_enabled
	popl %eax
	iret
lguest_noirq_end:

/*
 * A new task starts here, on a kernel stack sched.c laid out as if the task
 * had trapped into the kernel from its first user instruction.
 */
	.globl ret_from_fork
ret_from_fork:
	pushl %esp
	call trap_exit_work
	addl $4, %esp
	jmp ret_from_trap

/*
 * switch_to(prev, next): keep prev's callee-saved registers on its stack,
 * remember its esp in prev->ksp, and carry on with next's. The Host needs no
 * call here: sched.c has already told it about next's stack, TLS and page
 * tables.
 */
	.globl switch_to
switch_to:
	movl 4(%esp), %eax
	movl 8(%esp), %edx
	pushl %ebp
	pushl %ebx
	pushl %esi
	pushl %edi
	movl %esp, (%eax)                     /* prev->ksp */
	movl (%edx), %esp                     /* next->ksp */
	popl %edi
	popl %esi
	popl %ebx
	popl %ebp
	ret

/*
 * Faults on purpose. traps.c asks fault_fixup() whether a kernel fault hit
 * one of these instructions; if so it resumes at the fixup instead.
 */
	.globl probe_read32
probe_read32:                           /* int probe_read32(u32 addr, u32 *val) */
	movl 4(%esp), %edx
probe_read_insn:
	movl (%edx), %eax
	movl 8(%esp), %ecx
	movl %eax, (%ecx)
	xorl %eax, %eax
	ret
probe_read_fixup:
	movl $-1, %eax
	ret

	.globl probe_divide
probe_divide:                           /* int probe_divide(u32 n, u32 d) */
	movl 4(%esp), %eax
	xorl %edx, %edx
probe_divide_insn:
	divl 8(%esp)
	ret
probe_divide_fixup:
	movl $-1, %eax
	ret

	.globl fault_fixup
fault_fixup:                            /* u32 fault_fixup(u32 eip) */
	movl 4(%esp), %ecx
	movl $probe_read_fixup, %eax
	cmpl $probe_read_insn, %ecx
	je 1f
	movl $probe_divide_fixup, %eax
	cmpl $probe_divide_insn, %ecx
	je 1f
	xorl %eax, %eax
1:	ret
