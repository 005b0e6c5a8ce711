/*
 * timer.c - time and the clock interrupt.
 *
 * The Host gives us one one-shot timer: SET_CLOCKEVENT(ns) raises IRQ 0
 * (vector 32) that many nanoseconds from now; a new call replaces the old
 * one and 0 cancels it (docs/abi.md §8). The scheduler tick re-arms it from
 * the interrupt. Time itself comes from rdtsc, which runs natively, scaled by
 * the tsc_khz the Host wrote into lguest_data; without it we fall back on the
 * wall clock the Host keeps in lguest_data.time.
 */
#include "lgk.h"

u32 tick_ns;
volatile u64 jiffies;
volatile u32 timer_irqs;
volatile u64 timer_irq_tsc;
static u64 tsc_boot;

void clockevent_set(u32 ns)
{
	hcall(LHCALL_SET_CLOCKEVENT, ns, 0, 0, 0);
}

static void timer_irq(struct regs *r)
{
	(void)r;
	timer_irq_tsc = rdtsc();
	timer_irqs++;
	if (tick_ns) {
		clockevent_set(tick_ns);
		jiffies++;
		sched_tick();
	}
}

void tick_start(u32 ns)
{
	tick_ns = ns;
	clockevent_set(ns);
}

void tick_stop(void)
{
	tick_ns = 0;
	clockevent_set(0);
}

u64 cycles_to_ns(u64 cycles)
{
	u32 khz = lguest_data.tsc_khz, rem;
	if (!khz)
		return 0;
	u64 ms = div_u64(cycles, khz, &rem);          /* khz cycles per ms */
	return ms * 1000000 + div_u64((u64)rem * 1000000, khz, NULL);
}

u64 now_ns(void)
{
	if (lguest_data.tsc_khz)
		return cycles_to_ns(rdtsc() - tsc_boot);
	u32 sec, nsec;
	do {                    /* the Host may update it between our two reads */
		sec = lguest_data.time.sec;
		nsec = lguest_data.time.nsec;
		barrier();
	} while (sec != lguest_data.time.sec);
	return (u64)sec * 1000000000u + nsec;
}

void timer_init(void)
{
	tsc_boot = rdtsc();
	irq_set_handler(0, timer_irq);
	/* The timer is ready: unmask IRQ 0 (masked since boot, §4). */
	lguest_data.blocked_interrupts[0] &= ~1u;
}
