/*
 * user.c - the programs lgk runs in ring 3.
 *
 * This file is linked at USER_CODE (0x08000000), not with the kernel (see
 * lgk.ld), and every user task maps its pages there read-only. It must call
 * nothing in the kernel and keep no writable data: a task's own memory is
 * its data page at USER_DATA, its stack, and the pages it faults in at
 * USER_DEMAND. It talks to the kernel only through int $0x80.
 */
#include "lgk.h"

static inline u32 sys(u32 n, u32 a, u32 b)
{
	u32 ret;
	__asm__ __volatile__("int $0x80" : "=a"(ret) : "a"(n), "b"(a), "c"(b) : "memory");
	return ret;
}

static inline void report(u32 slot, u32 value) { sys(SYS_REPORT, slot, value); }
static inline void yield(void) { sys(SYS_YIELD, 0, 0); }

static inline u64 user_rdtsc(void)
{
	u32 lo, hi;
	__asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}

static void report_cycles(u64 c)
{
	report(6, (u32)c);
	report(7, (u32)(c >> 32));
}

/* Every task starts here (sched.c put prog in eax and arg in ebx). */
void user_main(u32 prog, u32 arg);
__asm__(".text\n"
	".globl user_entry\n"
	"user_entry:\n\t"
	"pushl %ebx\n\t"
	"pushl %eax\n\t"
	"call user_main\n"
	"1:\tjmp 1b\n");

/*
 * fpu_check(value, rounds): put value into the x87 stack top and into xmm0,
 * then yield `rounds` times; after each switch back both must still hold
 * it. Returns the number of mismatches. In assembly, because the compiler
 * must not touch those registers in between.
 */
_Static_assert(SYS_YIELD == 2, "fpu_check uses the number");
u32 fpu_check(u32 value, u32 rounds);
__asm__(".text\n"
	"fpu_check:\n\t"
	"pushl %ebx\n\tpushl %esi\n\tpushl %edi\n\tpushl %ebp\n\t"
	"movl 20(%esp), %esi\n\t"
	"movl 24(%esp), %edi\n\t"
	"xorl %ebp, %ebp\n\t"
	"pushl %esi\n\t"
	"fildl (%esp)\n\t"           /* first FPU use: #NM, the kernel sets us up */
	"addl $4, %esp\n\t"
	"movd %esi, %xmm0\n"
	"1:\tmovl $2, %eax\n\t"      /* SYS_YIELD */
	"int $0x80\n\t"
	"subl $4, %esp\n\t"
	"fistl (%esp)\n\t"
	"popl %eax\n\t"
	"cmpl %esi, %eax\n\t"
	"je 2f\n\t"
	"incl %ebp\n"
	"2:\tmovd %xmm0, %eax\n\t"
	"cmpl %esi, %eax\n\t"
	"je 3f\n\t"
	"incl %ebp\n"
	"3:\tdecl %edi\n\t"
	"jnz 1b\n\t"
	"movl %ebp, %eax\n\t"
	"popl %ebp\n\tpopl %edi\n\tpopl %esi\n\tpopl %ebx\n\t"
	"ret\n");

/* Same user address, different contents: the kernel wrote a value unique to
   this task at USER_DATA; check it survives other tasks running. */
static u32 prog_addr_space(void)
{
	volatile u32 *data = (u32 *)USER_DATA;
	u32 mine = data[0], good = 0;
	report(0, mine);
	data[2] = ~mine;
	for (int i = 0; i < 5; i++) {
		yield();
		if (data[0] == mine && data[2] == ~mine)
			good++;
	}
	report(1, good);
	return 0;
}

/* Thread-local storage: GDT entry 6 (selector 0x33), loaded per task. */
static u32 prog_tls(void)
{
	u32 v;
	__asm__ __volatile__("movl %1, %%gs\n\tmovl %%gs:0, %0" : "=r"(v) : "r"((u32)TLS_SEL(0)));
	report(0, v);
	for (int i = 0; i < 3; i++)
		yield();
	__asm__ __volatile__("movl %%gs:0, %0" : "=r"(v));
	report(1, v);
	return 0;
}

/* System calls: the right answer, and the registers a system call must not
   change (everything but eax) left alone. */
static u32 prog_syscall(u32 id)
{
	u32 wrong = 0;
	for (int i = 0; i < 100; i++)
		if (sys(SYS_GETPID, 0, 0) != id)
			wrong++;
	u32 n = SYS_GETPID, a = 0x11111111, b = 0x22222222, c = 0x33333333;
	u32 d = 0x44444444, e = 0x55555555;
	__asm__ __volatile__("int $0x80"
			     : "+a"(n), "+b"(a), "+S"(b), "+D"(c), "+d"(d), "+c"(e)
			     : : "memory");
	if (n != id || a != 0x11111111 || b != 0x22222222 || c != 0x33333333 ||
	    d != 0x44444444 || e != 0x55555555)
		wrong += 1000;
	sys(SYS_WRITE, (u32)"hello from ring 3\n", 18);
	report(0, wrong);
	return 0;
}

/* Never yields: only the timer interrupt can take the CPU away. */
static void prog_spin(void)
{
	volatile u32 *counter = (u32 *)(USER_DATA + 4);
	for (;;)
		(*counter)++;
}

/* Touch fresh pages; the kernel's #PF handler fills each on demand. */
static u32 prog_demand(u32 pages)
{
	u32 good = 0;
	for (u32 i = 0; i < pages; i++)
		*(volatile u32 *)(USER_DEMAND + i * PAGE_SIZE + 12) = i * 7 + 1;
	for (u32 i = 0; i < pages; i++)
		if (*(volatile u32 *)(USER_DEMAND + i * PAGE_SIZE + 12) == i * 7 + 1)
			good++;
	report(0, good);
	report(1, sys(SYS_CR2, 0, 0));
	return 0;
}

static u32 bench_syscall(u32 n)
{
	u64 t0 = user_rdtsc();
	for (u32 i = 0; i < n; i++)
		sys(SYS_GETPID, 0, 0);
	report_cycles(user_rdtsc() - t0);
	return 0;
}

static u32 bench_fault(u32 n)
{
	u64 t0 = user_rdtsc();
	for (u32 i = 0; i < n; i++)
		*(volatile u32 *)(USER_DEMAND + i * PAGE_SIZE) = i;
	report_cycles(user_rdtsc() - t0);
	return 0;
}

static u32 bench_yield(u32 n)
{
	u64 t0 = user_rdtsc();
	for (u32 i = 0; i < n; i++)
		yield();
	report_cycles(user_rdtsc() - t0);
	return 0;
}

void user_main(u32 prog, u32 arg)
{
	u32 code = 0;
	switch (prog) {
	case PROG_ADDR_SPACE: code = prog_addr_space(); break;
	case PROG_TLS: code = prog_tls(); break;
	case PROG_SYSCALL: code = prog_syscall(arg); break;
	case PROG_SPIN: prog_spin(); break;
	case PROG_FPU: report(0, fpu_check(arg, 10)); break;
	case PROG_DEMAND: code = prog_demand(arg); break;
	case PROG_GP_INOUT:      /* in/out at ring 3: #GP, and the kernel kills us */
		report(0, 1);
		__asm__ __volatile__("inb $0x60, %%al" : : : "eax");
		code = 99;
		break;
	case PROG_INT3:          /* a breakpoint gate ring 3 may use: we come back */
		__asm__ __volatile__("int3");
		report(0, 1);
		break;
	case PROG_HCALL:         /* a hypercall from ring 3: #GP(0xFA) */
		__asm__ __volatile__("int $0x1f" : : "a"(LHCALL_SHUTDOWN), "b"(0), "c"(0));
		code = 99;
		break;
	case PROG_INT_GATE:      /* an interrupt gate with DPL 0: #GP(0x102) */
		__asm__ __volatile__("int $0x20");
		code = 99;
		break;
	case PROG_BENCH_SYSCALL: code = bench_syscall(arg); break;
	case PROG_BENCH_FAULT: code = bench_fault(arg); break;
	case PROG_BENCH_YIELD: code = bench_yield(arg); break;
	default: code = 98;
	}
	sys(SYS_EXIT, code, 0);
}
