/*
 * lguest.h - the guest's half of the lguest ABI, generation G2
 * (as in Linux 3.10-3.19), restated from docs/abi.md.
 * Included from C and from assembly.
 */
#ifndef LGUEST_H
#define LGUEST_H

/* A hypercall is `int $0x1f` with the call number in eax and up to four
   arguments in ebx, ecx, edx, esi. Nothing comes back (§3.1). */
#define LGUEST_TRAP_ENTRY        0x1F

#define LHCALL_FLUSH_ASYNC       0   /* no-op: drains the async ring */
#define LHCALL_LGUEST_INIT       1   /* gpa of lguest_data */
#define LHCALL_SHUTDOWN          2   /* gpa of message, POWEROFF/RESTART */
#define LHCALL_NEW_PGTABLE       4   /* gpa of the new top level (our cr3) */
#define LHCALL_FLUSH_TLB         5   /* 0: user mappings, else everything */
#define LHCALL_LOAD_IDT_ENTRY    6   /* vector, low, high */
#define LHCALL_SET_STACK         7   /* ss, esp (virtual top), pages */
#define LHCALL_TS                8   /* 8: set CR0.TS, 0: clear it */
#define LHCALL_SET_CLOCKEVENT    9   /* one-shot, ns from now; 0 cancels */
#define LHCALL_HALT             10   /* sleep until an interrupt */
#define LHCALL_SET_PMD          13   /* PAE: gpa of PMD page, index */
#define LHCALL_SET_PTE          14   /* gpa of top, vaddr, pte low, pte high */
#define LHCALL_SET_PGD          15   /* gpa of top (PAE: PDPT), index */
#define LHCALL_LOAD_TLS         16   /* gpa of 3 descriptors, cpu */
#define LHCALL_NOTIFY           17   /* gpa: here, an early-console string */
#define LHCALL_LOAD_GDT_ENTRY   18   /* index, low, high */
#define LHCALL_SEND_INTERRUPTS  19   /* no-op: the Host delivers on the way back */
#define LHCALL_MAX              20

#define LGUEST_SHUTDOWN_POWEROFF 1
#define LGUEST_SHUTDOWN_RESTART  2

#define LHCALL_RING_SIZE        64
#define LGUEST_IRQS             32
#define LGUEST_SYSCALL_VECTOR   0x80
#define FIRST_EXTERNAL_VECTOR   32   /* IRQ n arrives on vector 32 + n */

/* Offsets in struct lguest_data (G2, §4), for the assembly. */
#define LGUEST_DATA_irq_enabled  0
#define LGUEST_DATA_SIZE         1392

#ifndef __ASSEMBLER__
/* One slot of the async ring: the call number, then its four arguments. */
struct hcall_args {
	unsigned int arg0, arg1, arg2, arg3, arg4;
};

/* The page we share with the Host. The guest initialises it statically and
   hands over its address in LGUEST_INIT; from then on both sides read and
   write it without hypercalls. */
struct lguest_data {
	unsigned int irq_enabled;             /* 0 or 0x200: our virtual IF */
	unsigned int blocked_interrupts[1];   /* bit n: IRQ n masked */
	unsigned int cr2;                     /* Host: address of the last #PF */
	struct { unsigned int sec, nsec; } time;   /* Host: wall clock */
	int irq_pending;                      /* Host: 0x200 = an IRQ waits for us */
	unsigned char hcall_status[LHCALL_RING_SIZE];     /* 0xFF free, 0 queued */
	struct hcall_args hcalls[LHCALL_RING_SIZE];
	unsigned int reserve_mem;             /* Host: top bytes we must not map */
	unsigned int tsc_khz;                 /* Host: 0 if the TSC is unusable */
	unsigned int noirq_start, noirq_end;  /* our iret window (G2) */
	unsigned int kernel_address;          /* PAGE_OFFSET */
	unsigned int syscall_vec;             /* 0x80 */
};

_Static_assert(__builtin_offsetof(struct lguest_data, hcall_status) == 24, "G2 layout");
_Static_assert(__builtin_offsetof(struct lguest_data, hcalls) == 88, "G2 layout");
_Static_assert(__builtin_offsetof(struct lguest_data, reserve_mem) == 1368, "G2 layout");
_Static_assert(__builtin_offsetof(struct lguest_data, noirq_start) == 1376, "G2 layout");
_Static_assert(__builtin_offsetof(struct lguest_data, kernel_address) == 1384, "G2 layout");
_Static_assert(sizeof(struct lguest_data) == LGUEST_DATA_SIZE, "G2 layout");
#endif

#endif
