/*
 * lguest.c - talking to the Host: lguest_data, hypercalls, the async
 * hypercall ring, the virtual interrupt flag, and SHUTDOWN.
 *
 * Everything here follows docs/abi.md §3-§5.
 */
#include "lgk.h"

/* entry.S: the few instructions of our iret path during which the Host must
   not deliver an interrupt (see lguest_iret there). */
extern char lguest_noirq_start[], lguest_noirq_end[];

/*
 * The page we share with the Host. Its address goes to the Host in
 * LGUEST_INIT (boot/head.S), so these initial values are what the Host
 * reads there: the async ring all free, every IRQ masked until its handler
 * is ready (timer_init() unmasks IRQ 0, virtio.c one per queue), interrupts
 * off, and the facts about us the Host checks.
 */
struct lguest_data lguest_data __attribute__((aligned(4096))) = {
	.irq_enabled = 0,
	.blocked_interrupts = { ~0u },        /* every IRQ masked until its driver is ready */
	.hcall_status = { [0 ... LHCALL_RING_SIZE - 1] = 0xFF },
	.noirq_start = (u32)lguest_noirq_start,
	.noirq_end = (u32)lguest_noirq_end,
	.kernel_address = PAGE_OFFSET,
	.syscall_vec = LGUEST_SYSCALL_VECTOR,
};

/* How often each hypercall was made (sync or queued), for the self-test. */
u32 hcall_counts[LHCALL_MAX];
u32 async_queued, async_sync_fallbacks;

/*
 * A synchronous hypercall. The Host first runs everything queued in the
 * async ring, then this call; when it returns, all of it has happened.
 */
void hcall(u32 call, u32 a1, u32 a2, u32 a3, u32 a4)
{
	if (call < LHCALL_MAX)
		hcall_counts[call]++;
	__asm__ __volatile__("int $0x1f"
			     : : "a"(call), "b"(a1), "c"(a2), "d"(a3), "S"(a4)
			     : "memory");
}

/*
 * The async ring (§5): 64 slots in lguest_data. We fill them in order at our
 * own cursor; the Host empties them, in the same order, at the start of the
 * next synchronous hypercall. A slot whose status is not 0xFF is still
 * waiting for the Host, so the ring is full: then we make the call
 * synchronously, which also drains everything before it, keeping the order.
 */
static u32 ring_next;

static void async_hcall(u32 call, u32 a1, u32 a2, u32 a3, u32 a4)
{
	u32 flags = irq_save();          /* an interrupt handler might queue too */
	if (lguest_data.hcall_status[ring_next] != 0xFF) {
		async_sync_fallbacks++;
		hcall(call, a1, a2, a3, a4);
	} else {
		struct hcall_args *slot = &lguest_data.hcalls[ring_next];
		hcall_counts[call]++;
		async_queued++;
		slot->arg0 = call;
		slot->arg1 = a1;
		slot->arg2 = a2;
		slot->arg3 = a3;
		slot->arg4 = a4;
		barrier();                    /* arguments before the status byte */
		lguest_data.hcall_status[ring_next] = 0;
		ring_next = (ring_next + 1) % LHCALL_RING_SIZE;
	}
	irq_restore(flags);
}

/*
 * "Lazy mode": a stretch of page-table or context-switch updates that need
 * not reach the Host one by one. Inside it, lazy_hcall() queues; lazy_end()
 * sends FLUSH_ASYNC so the Host has done everything before we go on.
 */
static int lazy_depth;

void lazy_begin(void) { lazy_depth++; }
int lazy_mode(void) { return lazy_depth > 0; }

void lazy_end(void)
{
	if (--lazy_depth == 0)
		hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
}

/* Queue a call even outside a lazy section, for news the Host may hear late:
   it runs at the next synchronous hypercall, whenever that comes. */
void queue_hcall(u32 call, u32 a1, u32 a2, u32 a3, u32 a4)
{
	async_hcall(call, a1, a2, a3, a4);
}

void lazy_hcall(u32 call, u32 a1, u32 a2, u32 a3, u32 a4)
{
	if (lazy_depth)
		async_hcall(call, a1, a2, a3, a4);
	else
		hcall(call, a1, a2, a3, a4);
}

/*
 * Turning the virtual interrupt flag back on. While it was off, the Host may
 * have held an interrupt back and said so in irq_pending; it delivers that
 * interrupt the next time it runs, so give it a chance: SEND_INTERRUPTS.
 */
void irq_restore(u32 flags)
{
	lguest_data.irq_enabled = flags;
	barrier();
	if ((flags & X86_EFLAGS_IF) && lguest_data.irq_pending)
		hcall(LHCALL_SEND_INTERRUPTS, 0, 0, 0, 0);
}

/* SHUTDOWN: the Host reads 128 bytes at the message, so it lives here,
   in the kernel image, never near the end of RAM. */
static char shutdown_msg[128];

void shutdown(const char *msg, u32 how)
{
	console_flush();                  /* every line out before we go */
	size_t n = strlen(msg);
	if (n > sizeof(shutdown_msg) - 1)
		n = sizeof(shutdown_msg) - 1;
	memcpy(shutdown_msg, msg, n);
	shutdown_msg[n] = 0;
	for (;;)
		hcall(LHCALL_SHUTDOWN, __pa(shutdown_msg), how, 0, 0);
}

void panic(const char *fmt, ...)
{
	static char buf[120];
	static int panicking;
	__builtin_va_list ap;
	irq_disable();
	if (!panicking++)
		console_flush();          /* what was written before the panic first */
	console_virtio = 0;               /* then the early console: it cannot fail */
	__builtin_va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	__builtin_va_end(ap);
	kprintf("lgk: panic: %s\n", buf);
	shutdown(buf, LGUEST_SHUTDOWN_POWEROFF);
}
