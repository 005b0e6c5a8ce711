/*
 * sched.c - tasks, the scheduler, the context switch, lazy FPU and the
 * system calls.
 *
 * A task is a kernel stack (one page) plus, for user tasks, an address space.
 * Task 0 is kmain itself, a kernel thread on the boot stack. The kernel is
 * not preemptible: a task switch happens when a task blocks (schedule()), or
 * on the way back to user space when the timer tick asked for one.
 *
 * What the Host must hear at a switch (docs/abi.md §3.3): the kernel stack
 * to use when the next task traps from ring 3 (SET_STACK), its TLS entries
 * (LOAD_TLS), its page tables (NEW_PGTABLE) and, for lazy FPU, that the FPU
 * must trap on first use (TS). All four go into the async ring and reach
 * the Host with one FLUSH_ASYNC: the switch costs one exit, not four.
 */
#include "lgk.h"

#define MAX_TASKS 8
extern char boot_stack[], boot_stack_top[];

static struct task tasks[MAX_TASKS];
struct task *current;
volatile int need_resched;
struct task *fpu_owner;              /* whose state is in the FPU registers */
static int ts_set;                   /* we asked the Host for CR0.TS */
u32 context_switches;

void sched_init(void)
{
	struct task *t = &tasks[0];
	t->state = TASK_RUNNABLE;
	t->name = "kmain";
	t->kstack = (u32)boot_stack;
	t->kstack_top = (u32)boot_stack_top;
	current = t;
	hcall(LHCALL_SET_STACK, KERNEL_DS, t->kstack_top, 1, 0);
}

/* ---- lazy FPU --------------------------------------------------------------------
 * The FPU keeps the last user's registers until someone else touches it:
 * at a switch we save the outgoing owner's state and ask for CR0.TS; the
 * next FPU instruction then raises #NM, and fpu_trap() clears TS and loads
 * that task's state. */
void fpu_switch_out(struct task *prev)
{
	if (fpu_owner == prev) {
		__asm__ __volatile__("fxsave %0" : "=m"(*(u8 (*)[512])prev->fpu));
		prev->fpu_used = 1;
		fpu_owner = NULL;
	}
	if (!ts_set) {
		lazy_hcall(LHCALL_TS, 8, 0, 0, 0);
		ts_set = 1;
	}
}

void fpu_trap(void)
{
	hcall(LHCALL_TS, 0, 0, 0, 0);
	ts_set = 0;
	if (fpu_owner && fpu_owner != current) {
		__asm__ __volatile__("fxsave %0" : "=m"(*(u8 (*)[512])fpu_owner->fpu));
		fpu_owner->fpu_used = 1;
	}
	if (!current->fpu_used) {
		/* First use: a clean state (x87 control word 0x37F, every register
		   empty, SSE control 0x1F80), never the previous owner's leftovers. */
		memset(current->fpu, 0, sizeof(current->fpu));
		*(u16 *)&current->fpu[0] = 0x037F;
		*(u32 *)&current->fpu[24] = 0x1F80;
	}
	__asm__ __volatile__("fxrstor %0" : : "m"(*(u8 (*)[512])current->fpu));
	current->fpu_used = 1;
	fpu_owner = current;
}

/* Give the FPU up now, as a switch would (the self-test uses this). */
void fpu_release(void)
{
	fpu_switch_out(current);
}

/* ---- switching ---------------------------------------------------------------------- */
static struct mm *mm_of(struct task *t) { return t->mm ? t->mm : &kernel_mm; }

static void context_switch(struct task *prev, struct task *next)
{
	lazy_begin();
	lazy_hcall(LHCALL_SET_STACK, KERNEL_DS, next->kstack_top, 1, 0);
	load_tls(next->tls);
	if (mm_of(next) != mm_of(prev))
		mm_switch(mm_of(next));
	fpu_switch_out(prev);
	lazy_end();                       /* FLUSH_ASYNC: the Host does it all now */
	context_switches++;
	current = next;
	switch_to(prev, next);
}

static struct task *pick_next(struct task *prev)
{
	u32 start = (u32)(prev - tasks);
	for (u32 i = 1; i <= MAX_TASKS; i++) {
		struct task *t = &tasks[(start + i) % MAX_TASKS];
		if (t->state == TASK_RUNNABLE)
			return t;
	}
	return NULL;
}

/*
 * Run something else, or nothing: with no task ready we HALT, which the Host
 * treats as "enable interrupts and wait for one" (we call it with our flag
 * off, so no wake-up can slip in between the check and the halt).
 */
void schedule(void)
{
	u32 flags = irq_save();
	struct task *prev = current, *next;
	for (;;) {
		need_resched = 0;
		next = pick_next(prev);
		if (next)
			break;
		hcall(LHCALL_HALT, 0, 0, 0, 0);
		irq_disable();
	}
	if (next != prev)
		context_switch(prev, next);
	irq_restore(flags);
}

/* From the timer interrupt: wake sleepers, and switch at the next chance. */
void sched_tick(void)
{
	for (u32 i = 0; i < MAX_TASKS; i++)
		if (tasks[i].state == TASK_SLEEPING && tasks[i].wake_at <= jiffies)
			tasks[i].state = TASK_RUNNABLE;
	need_resched = 1;
}

void sleep_ticks(u32 n)
{
	u32 flags = irq_save();
	current->wake_at = jiffies + n;
	current->state = TASK_SLEEPING;
	schedule();
	irq_restore(flags);
}

/* ---- task life ------------------------------------------------------------------------- */

/*
 * A new user task: an address space, a kernel stack, and on that stack a
 * frame as if the task had trapped in from its first instruction, under the
 * frame switch_to() pops. Its first switch_to() "returns" to ret_from_fork,
 * which irets to user_entry at ring 3 with eax = prog, ebx = arg.
 */
struct task *task_create_user(const char *name, u32 prog, u32 arg)
{
	struct task *t = NULL;
	for (u32 i = 1; i < MAX_TASKS; i++)
		if (tasks[i].state == TASK_FREE) {
			t = &tasks[i];
			break;
		}
	if (!t)
		return NULL;
	memset(t, 0, sizeof(*t));
	t->id = (int)(t - tasks);
	t->name = name;
	t->mm = mm_create_user();
	u32 kstack_pa = page_alloc();
	if (!t->mm || !kstack_pa)
		panic("out of memory creating task %s", name);
	t->kstack = (u32)__va(kstack_pa);
	t->kstack_top = t->kstack + PAGE_SIZE;

	struct regs *r = (struct regs *)(t->kstack_top - sizeof(struct regs));
	memset(r, 0, sizeof(*r));
	r->eip = (u32)user_entry;
	r->cs = USER_CS;
	r->eflags = X86_EFLAGS_IF | 0x2;
	r->esp = USER_STACK_TOP - 16;
	r->ss = USER_DS;
	r->ds = r->es = USER_DS;
	r->eax = prog;
	r->ebx = arg;
	u32 *sp = (u32 *)r;
	*--sp = (u32)ret_from_fork;
	for (int i = 0; i < 4; i++)
		*--sp = 0;                    /* ebp, ebx, esi, edi for switch_to */
	t->ksp = (u32)sp;
	t->state = TASK_WAITING;          /* until task_start() */
	return t;
}

void task_start(struct task *t)
{
	t->state = TASK_RUNNABLE;
}

void task_kill(struct task *t)
{
	u32 flags = irq_save();
	t->state = TASK_DEAD;
	for (u32 i = 0; i < MAX_TASKS; i++)
		if (tasks[i].state == TASK_WAITING && tasks[i].waiting_for == t)
			tasks[i].state = TASK_RUNNABLE;
	if (t == current)
		need_resched = 1;
	irq_restore(flags);
}

void task_wait(struct task *t)
{
	u32 flags = irq_save();
	while (t->state != TASK_DEAD) {
		current->waiting_for = t;
		current->state = TASK_WAITING;
		schedule();
	}
	current->waiting_for = NULL;
	irq_restore(flags);
}

/* Free a dead task. It is not running: we are, on another stack, and
   switching to us loaded our page tables. */
void task_reap(struct task *t)
{
	if (t->state != TASK_DEAD || t == current)
		panic("reaping a live task");
	if (fpu_owner == t)
		fpu_owner = NULL;
	mm_destroy(t->mm);
	page_free(__pa(t->kstack));
	t->state = TASK_FREE;
}

/* ---- system calls ----------------------------------------------------------------------
 * int $0x80 from ring 3 arrives here straight from the CPU: a direct trap.
 * eax is the call, ebx and ecx the arguments, eax the result. */
static int user_range_ok(u32 p, u32 len)
{
	u32 code_end = USER_CODE + (u32)(__user_end - __user_start);
	if (p + len < p)
		return 0;
	return (p >= USER_CODE && p + len <= code_end) ||
	       (p >= USER_DATA && p + len <= USER_DATA + PAGE_SIZE);
}

void syscall(struct regs *r)
{
	struct task *t = current;
	u32 ret = 0;
	switch (r->eax) {
	case SYS_EXIT:
		t->exit_code = (s32)r->ebx;
		task_kill(t);
		break;
	case SYS_YIELD:
		need_resched = 1;
		break;
	case SYS_GETPID:
		ret = (u32)t->id;
		break;
	case SYS_WRITE: {
		char buf[80];
		u32 n = r->ecx < sizeof(buf) ? r->ecx : sizeof(buf);
		if (!user_range_ok(r->ebx, n)) {
			ret = (u32)-1;
			break;
		}
		memcpy(buf, (const void *)r->ebx, n);
		kprintf("[%s] ", t->name);
		console_write(buf, n);
		break;
	}
	case SYS_REPORT:
		if (r->ebx < ARRAY_SIZE(t->result))
			t->result[r->ebx] = r->ecx;
		break;
	case SYS_SLEEP:
		sleep_ticks(r->ebx);
		break;
	case SYS_CR2:
		ret = t->last_cr2;
		break;
	default:
		ret = (u32)-1;
	}
	r->eax = ret;
}
