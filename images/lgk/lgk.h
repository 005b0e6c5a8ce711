/*
 * lgk.h - everything the C files of lgk share: types, the memory map,
 * and one prototype block per subsystem (in the order kmain brings them up).
 *
 * lgk is a paravirtual i386 kernel: it runs at ring 1 under an lguest Host
 * and asks the Host, through hypercalls, for everything a ring-0 kernel would
 * do itself. lguest.h holds the ABI; this file holds the kernel.
 */
#ifndef LGK_H
#define LGK_H

#include "lguest.h"

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef int s32;
typedef long long s64;
typedef unsigned int size_t;

#define NULL ((void *)0)
#define barrier() __asm__ __volatile__("" ::: "memory")
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define ALIGN_UP(x, a) (((x) + (a) - 1) & ~((a) - 1))
#define ALIGN_DOWN(x, a) ((x) & ~((a) - 1))

/* ---- The address space (see README.md, "Memory map") -------------------- */
#define PAGE_SIZE      4096u
#define PAGE_OFFSET    0xC0000000u        /* RAM is mapped here in every space */
#define LOAD_ADDRESS   0x00100000u        /* physical: 1 MiB */
#define __pa(v)        ((u32)(v) - PAGE_OFFSET)
#define __va(p)        ((void *)((u32)(p) + PAGE_OFFSET))

/* User space of every task (ring 3). */
#define USER_CODE      0x08000000u        /* the .user section, read-only */
#define USER_DATA      0x10000000u        /* one page per task: same address, own contents */
#define USER_DEMAND    0x20000000u        /* filled page by page by the #PF handler */
#define USER_DEMAND_END 0x20400000u
#define USER_STACK_TOP 0xC0000000u        /* one page just below the kernel */

/* Segment selectors (docs/abi.md §2.1). */
#define KERNEL_CS      0x61               /* GDT 12, RPL 1 */
#define KERNEL_DS      0x69               /* GDT 13, RPL 1 */
#define USER_CS        0x73               /* GDT 14, RPL 3 */
#define USER_DS        0x7B               /* GDT 15, RPL 3 */
#define TLS_SEL(n)     (((6 + (n)) << 3) | 3)   /* GDT 6-8, RPL 3 */

#define X86_EFLAGS_IF  0x200

/* ---- Page-table entries: one type for both formats ----------------------- */
#ifdef CONFIG_PAE
typedef u64 pte_t;
#define PTRS_PER_PT    512
#else
typedef u32 pte_t;
#define PTRS_PER_PT    1024
#endif
#define _PAGE_PRESENT  0x001
#define _PAGE_RW       0x002
#define _PAGE_USER     0x004
#define _PAGE_ACCESSED 0x020
#define _PAGE_DIRTY    0x040
#define _PAGE_GLOBAL   0x100
#define PTE_KERNEL     (_PAGE_PRESENT | _PAGE_RW | _PAGE_ACCESSED | _PAGE_DIRTY | _PAGE_GLOBAL)
#define PTE_USER_RW    (_PAGE_PRESENT | _PAGE_RW | _PAGE_USER | _PAGE_ACCESSED | _PAGE_DIRTY)
#define PTE_USER_RO    (_PAGE_PRESENT | _PAGE_USER | _PAGE_ACCESSED)
#define TABLE_KERNEL   0x063              /* a PDE/PMD entry: P RW A D */
#define TABLE_USER     0x067              /* ... plus US */
#define PDPT_PRESENT   0x001              /* PAE top level: present and nothing else */

/* ---- Saved registers: what the entry code pushes (entry.S) --------------- */
struct regs {
	u32 ebx, ecx, edx, esi, edi, ebp, eax;
	u32 ds, es, fs, gs;
	u32 vector, errcode;
	u32 eip, cs, eflags;
	u32 esp, ss;                      /* only when we came from ring 3 */
};
static inline int user_mode(const struct regs *r) { return (r->cs & 3) == 3; }

/* ---- lib.c ---------------------------------------------------------------- */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strncmp(const char *a, const char *b, size_t n);
u64 div_u64(u64 n, u32 d, u32 *rem);
int vsnprintf(char *buf, size_t size, const char *fmt, __builtin_va_list ap);
int snprintf(char *buf, size_t size, const char *fmt, ...);

/* ---- lguest.c: hypercalls, lguest_data, the virtual interrupt flag -------- */
extern struct lguest_data lguest_data;
extern u32 hcall_counts[LHCALL_MAX];
void hcall(u32 call, u32 a1, u32 a2, u32 a3, u32 a4);
void queue_hcall(u32 call, u32 a1, u32 a2, u32 a3, u32 a4);
void lazy_hcall(u32 call, u32 a1, u32 a2, u32 a3, u32 a4);
void lazy_begin(void);
void lazy_end(void);
int lazy_mode(void);
extern u32 async_queued, async_sync_fallbacks;

static inline u32 irq_save(void)
{
	u32 flags = lguest_data.irq_enabled;
	lguest_data.irq_enabled = 0;
	barrier();
	return flags;
}
void irq_restore(u32 flags);
static inline void irq_disable(void) { (void)irq_save(); }
static inline void irq_enable(void) { irq_restore(X86_EFLAGS_IF); }

void __attribute__((noreturn)) shutdown(const char *msg, u32 how);
void __attribute__((noreturn)) panic(const char *fmt, ...);

/* ---- console.c ------------------------------------------------------------- */
extern int console_virtio;               /* output goes through the virtio console */
void console_write(const char *s, size_t len);
void console_flush(void);
void console_mark(const char *mark);
void kprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- main.c ---------------------------------------------------------------- */
extern u32 mem_size;                     /* bytes of RAM (e820 entry 0) */
extern int mem_guessed;
extern char cmdline[256];
int cmdline_has(const char *word);
const char *cmdline_value(const char *key);   /* "key=value": value, else NULL */
u32 cmdline_u32(const char *key, u32 fallback);  /* "key=N": N, else fallback */
u32 parse_u32(const char *s, u32 fallback);

/* ---- segments.c ------------------------------------------------------------- */
u64 make_segment(u32 base, u32 limit_pages, u32 type, u32 dpl);
void load_gdt_entry(u32 index, u64 desc);
void segments_init(void);
void load_tls(const u64 tls[3]);

/* ---- traps.c --------------------------------------------------------------- */
void traps_init(void);
void set_idt_gate(u32 vector, void *handler, u32 type, u32 dpl);
void trap_dispatch(struct regs *r);
void trap_exit_work(struct regs *r);
extern void *trap_stubs[];               /* entry.S: one stub per vector */
#define GATE_INTERRUPT 0xE
#define GATE_TRAP      0xF
struct trap_record {                      /* what the last expected trap saw */
	u32 vector, errcode, eip, cr2, count;
};
extern volatile struct trap_record last_trap;
extern volatile u32 irq_counts[LGUEST_IRQS];
void irq_set_handler(u32 irq, void (*fn)(struct regs *));
extern volatile u32 min_irq_esp;          /* lowest esp any IRQ handler saw */

/* entry.S helpers used by the tests. */
int probe_read32(u32 addr, u32 *val);   /* 0, or -1 if it page-faulted */
int probe_divide(u32 n, u32 d);         /* n / d, or -1 if #DE */
u32 fault_fixup(u32 eip);                /* the fixup address for eip, or 0 */

/* ---- mm.c ------------------------------------------------------------------ */
struct mm {
	void *top;                        /* page directory (or PAE PDPT) */
	u32 top_pa;
	u32 data_pa;                      /* the page at USER_DATA */
	u32 pages[300];                   /* page-table and data pages to free */
	u32 npages;
};
extern struct mm kernel_mm;
extern u32 test_area;                    /* 4 MiB of kernel space for the tests */
extern u32 kernel_hole;                  /* a kernel address with no table behind it */
extern u32 lowmem_end;                   /* physical end of the direct map */
#define DEV_WINDOW_PAGES 96               /* the lguest bus: 1 + 3 x 31 queues at most */
extern u32 dev_window, dev_window_pa;    /* where the bus's pages appear, and from where */
void *map_device_pages(u32 pa, u32 npages);
void mm_init(void);
u32 page_alloc(void);                    /* physical address of a zeroed page */
void page_free(u32 pa);
u32 pages_free(void);
pte_t *mm_walk(struct mm *mm, u32 vaddr, int alloc, int user);
void mm_set_pte(struct mm *mm, u32 vaddr, pte_t pte);
void mm_fill_pte(struct mm *mm, u32 vaddr, pte_t pte);
struct mm *mm_create_user(void);
void mm_destroy(struct mm *mm);
void mm_switch(struct mm *mm);
void flush_tlb_kernel(void);
void flush_tlb_user(void);
void set_pgd_entry(struct mm *mm, u32 index, u64 value);
#ifdef CONFIG_PAE
void set_pmd_entry(u64 *pmd, u32 index, u64 value);
extern u64 *kernel_pmd;
#endif

/* ---- timer.c --------------------------------------------------------------- */
static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ __volatile__("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}
void timer_init(void);
u64 now_ns(void);
u64 cycles_to_ns(u64 cycles);
void clockevent_set(u32 ns);
#define TICK_NS 10000000u                /* the scheduler tick: 10 ms */
void tick_start(u32 ns);
void tick_stop(void);
extern volatile u64 jiffies;
extern volatile u32 timer_irqs;
extern volatile u64 timer_irq_tsc;        /* rdtsc when IRQ 0 last arrived */
extern u32 tick_ns;

/* ---- sched.c --------------------------------------------------------------- */
enum task_state { TASK_FREE, TASK_RUNNABLE, TASK_SLEEPING, TASK_WAITING, TASK_DEAD };
struct task {
	u32 ksp;                          /* saved kernel esp: keep first (entry.S) */
	u32 kstack;                       /* bottom of the kernel stack (virtual) */
	u32 kstack_top;
	struct mm *mm;                    /* NULL: a kernel thread (kernel_mm) */
	enum task_state state;
	u64 wake_at;                      /* jiffies, for TASK_SLEEPING */
	struct task *waiting_for;
	int id;
	const char *name;
	u64 tls[3];                       /* GDT entries 6-8 while this task runs */
	int fpu_used;                     /* has FPU state in fpu[] */
	u32 result[8];                    /* what user code reported (SYS_REPORT) */
	s32 exit_code;
	u32 fault_vector, fault_errcode, fault_cr2, fault_eip;
	u32 last_cr2;                     /* last demand-filled fault address */
	u32 demand_faults;
	u8 fpu[512] __attribute__((aligned(16)));   /* fxsave area */
};
extern struct task *current;
extern volatile int need_resched;
extern struct task *fpu_owner;
extern u32 context_switches;
void sched_init(void);
struct task *task_create_user(const char *name, u32 prog, u32 arg);
void task_start(struct task *t);
void task_kill(struct task *t);
void task_wait(struct task *t);
void task_reap(struct task *t);
void schedule(void);
void sleep_ticks(u32 n);
void sched_tick(void);
void fpu_switch_out(struct task *prev);
void fpu_trap(void);
void fpu_release(void);
void syscall(struct regs *r);
void switch_to(struct task *prev, struct task *next);    /* entry.S */
void ret_from_fork(void);                                /* entry.S */

/* ---- user.c: the ring-3 programs, and their system calls -------------------- */
enum { SYS_EXIT = 1, SYS_YIELD, SYS_GETPID, SYS_WRITE, SYS_REPORT, SYS_SLEEP, SYS_CR2 };
enum {
	PROG_ADDR_SPACE = 1, PROG_TLS, PROG_SYSCALL, PROG_SPIN, PROG_FPU,
	PROG_DEMAND, PROG_GP_INOUT, PROG_INT3, PROG_HCALL, PROG_INT_GATE,
	PROG_BENCH_SYSCALL, PROG_BENCH_FAULT, PROG_BENCH_YIELD,
};
extern char user_entry[];                 /* user.c: where every task starts */
extern char __user_start[], __user_end[], __user_pa[];   /* lgk.ld */

/* ---- selftest.c, bench.c ----------------------------------------------------- */
int selftest_run(void);                   /* returns the number of failures */
void check(const char *name, int ok, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void devtest_run(void);                   /* devtest.c: only for devices present */
void records_run(u32 seed);               /* devtest.c: the robustness tests' workloads */
void soak_run(u32 seconds);
void net_run(u32 seconds);
void bench_run(void);
void idle_run(u32 seconds, int oneshot);      /* bench.c: `idle=SECONDS` */

/* ---- hostile.c: misbehaving on purpose, for the Host's robustness tests ------ */
void __attribute__((noreturn)) hostile_run(const char *mode);

#endif
