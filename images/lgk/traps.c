/*
 * traps.c - the IDT, and what happens after entry.S has saved the registers.
 *
 * Like the GDT, the real IDT is the Host's: we describe each gate with
 * LOAD_IDT_ENTRY and the Host decides how it reaches us (docs/abi.md
 * §6.2-6.3). Trap gates for exceptions and for int $0x80 go "direct": the CPU
 * enters our handler without leaving the VM. #NM, #GP and #PF always pass
 * through the Host first (it emulates in/out, handles lazy FPU, records cr2),
 * and so do interrupts: the Host injects them by building a frame on our
 * stack. For an interrupt gate it also turns our virtual interrupt flag off.
 */
#include "lgk.h"

volatile struct trap_record last_trap;
volatile u32 irq_counts[LGUEST_IRQS];
volatile u32 min_irq_esp = 0xFFFFFFFF;
static void (*irq_handlers[LGUEST_IRQS])(struct regs *);

void set_idt_gate(u32 vector, void *handler, u32 type, u32 dpl)
{
	u32 h = (u32)handler;
	u32 low = ((u32)KERNEL_CS << 16) | (h & 0xFFFF);
	u32 high = (h & 0xFFFF0000) | (1u << 15) | (dpl << 13) | (type << 8);
	hcall(LHCALL_LOAD_IDT_ENTRY, vector, low, high, 0);
}

void traps_init(void)
{
	for (u32 v = 0; v < 32; v++) {
		if (v == 14)            /* #PF: cr2 must be read before another fault */
			set_idt_gate(v, trap_stubs[v], GATE_INTERRUPT, 0);
		else if (v == 3 || v == 4)   /* int3 and into work from ring 3 */
			set_idt_gate(v, trap_stubs[v], GATE_TRAP, 3);
		else
			set_idt_gate(v, trap_stubs[v], GATE_TRAP, 0);
	}
	for (u32 irq = 0; irq < LGUEST_IRQS; irq++)
		set_idt_gate(FIRST_EXTERNAL_VECTOR + irq, trap_stubs[32 + irq], GATE_INTERRUPT, 0);
	/* System calls: a trap gate user space may use, so the Host lets the CPU
	   deliver it directly and int $0x80 never leaves the VM. */
	set_idt_gate(LGUEST_SYSCALL_VECTOR, trap_stubs[64], GATE_TRAP, 3);
}

void irq_set_handler(u32 irq, void (*fn)(struct regs *))
{
	irq_handlers[irq] = fn;
}

/* ---- exceptions ------------------------------------------------------------ */

/* A user task did something fatal: it dies, and its parent learns why. */
static void kill_current(struct regs *r, u32 cr2)
{
	struct task *t = current;
	t->fault_vector = r->vector;
	t->fault_errcode = r->errcode;
	t->fault_eip = r->eip;
	t->fault_cr2 = cr2;
	t->exit_code = -(s32)r->vector - 1;
	task_kill(t);          /* trap_exit_work() then never returns to it */
}

/* The guest's own demand paging: a user task touching USER_DEMAND gets a
   fresh zeroed page there. */
static int demand_fill(u32 cr2)
{
	struct mm *mm = current->mm;
	if (!mm || cr2 < USER_DEMAND || cr2 >= USER_DEMAND_END ||
	    mm->npages >= ARRAY_SIZE(mm->pages))
		return 0;
	u32 pa = page_alloc();
	if (!pa)
		return 0;
	mm->pages[mm->npages++] = pa;
	mm_fill_pte(mm, ALIGN_DOWN(cr2, PAGE_SIZE), (pte_t)pa | PTE_USER_RW);
	current->last_cr2 = cr2;
	current->demand_faults++;
	return 1;
}

static void exception(struct regs *r)
{
	u32 cr2 = 0;
	if (r->vector == 14)
		cr2 = lguest_data.cr2;    /* the Host wrote it before delivering */
	last_trap.vector = r->vector;
	last_trap.errcode = r->errcode;
	last_trap.eip = r->eip;
	last_trap.cr2 = cr2;
	last_trap.count++;

	switch (r->vector) {
	case 3:                 /* int3: note it and carry on after the int3 */
		return;
	case 7:                 /* #NM: the FPU is not ours yet (lazy FPU) */
		fpu_trap();
		return;
	case 14:
		if (user_mode(r) && !(r->errcode & 1) && demand_fill(cr2))
			return;
		break;
	}
	if (user_mode(r)) {
		kill_current(r, cr2);
		return;
	}
	u32 fixup = fault_fixup(r->eip);
	if (fixup) {
		r->eip = fixup;
		return;
	}
	panic("trap %u in the kernel at %x, error code %x, cr2 %x",
	      r->vector, r->eip, r->errcode, cr2);
}

/* ---- interrupts -------------------------------------------------------------- */

static void irq(struct regs *r)
{
	u32 n = r->vector - FIRST_EXTERNAL_VECTOR;
	/* The Host delivers an interrupt only into code that had interrupts
	   on (or sat in HALT, which turns them on): the frame must say so. */
	if (!(r->eflags & X86_EFLAGS_IF))
		panic("IRQ %u delivered with interrupts off at %x", n, r->eip);
	if ((u32)r < min_irq_esp)
		min_irq_esp = (u32)r;
	irq_counts[n]++;
	if (irq_handlers[n])
		irq_handlers[n](r);
}

/* ---- the way in and the way out ------------------------------------------------ */

void trap_dispatch(struct regs *r)
{
	u32 v = r->vector;
	/* Through a trap gate the pushed IF is whatever the CPU (direct trap) or
	   the Host saw, not necessarily our virtual flag, which a trap gate
	   leaves alone: make the frame say what irq_enabled says, so that the
	   iret restores the flag we actually had. */
	if ((v < 32 && v != 14) || v == LGUEST_SYSCALL_VECTOR)
		r->eflags = (r->eflags & ~X86_EFLAGS_IF) | (lguest_data.irq_enabled & X86_EFLAGS_IF);

	if (v >= FIRST_EXTERNAL_VECTOR && v < FIRST_EXTERNAL_VECTOR + LGUEST_IRQS)
		irq(r);
	else if (v == LGUEST_SYSCALL_VECTOR)
		syscall(r);
	else
		exception(r);
	trap_exit_work(r);
}

/*
 * Last things before the iret, with interrupts off. Going back to user space
 * is where we switch tasks if the timer asked for it (or if this task just
 * died). It is also where we ask for an interrupt the Host is holding back
 * for us (irq_pending): the iret is about to turn interrupts on, and without
 * a SEND_INTERRUPTS the Host would deliver it only at the next exit.
 *
 * Only on the way to user space, and only once: an interrupt taken here
 * returns to the kernel (this function), so it cannot ask again, and a storm
 * of interrupts nests at most one frame deep. A Host that never clears
 * irq_pending cannot keep us here either.
 */
void trap_exit_work(struct regs *r)
{
	int sent = 0;
	if (!user_mode(r)) {
		irq_disable();
		return;
	}
	for (;;) {
		irq_disable();
		if (need_resched || current->state != TASK_RUNNABLE) {
			schedule();
			continue;
		}
		if (!sent && lguest_data.irq_pending) {
			sent = 1;
			irq_enable();
			continue;
		}
		break;
	}
}
