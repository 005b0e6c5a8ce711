/*
 * bench.c - micro benchmarks, on the `bench` command line option.
 *
 * Every number is timed with rdtsc and turned into nanoseconds with the
 * tsc_khz the Host gave us, and all of them go out on one line:
 *
 *   bench: null_hypercall_ns=.. syscall_ns=.. pagefault_ns=.. ctxswitch_ns=..
 *          pte_batch_ns=.. timer_latency_ns=.. tsc_khz=..
 *
 * null_hypercall_ns  one FLUSH_ASYNC with an empty ring: a full exit to the Host
 * syscall_ns         one int $0x80 from ring 3 (getpid): a direct trap, no exit
 * pagefault_ns       one ring-3 touch of a fresh page: #PF through the Host,
 *                    our handler, a SET_PTE
 * ctxswitch_ns       one switch between two ring-3 tasks that keep yielding
 * pte_batch_ns       64 SET_PTEs queued in a lazy section plus the FLUSH_ASYNC
 * timer_latency_ns   how late IRQ 0 arrives after a 1 ms SET_CLOCKEVENT (HALTed):
 *                    the mean, and timer_latency_median_ns / timer_latency_p99_ns
 *
 * Each measurement is bracketed by console_mark() lines ("@b:name\n",
 * "@e:name\n") that reach the Launcher synchronously, so it can count the
 * exits each one took (launcher/bench.py turns them into exits per operation).
 *
 * With a block device (and room on it), one or two more, in MB/s (10^6 bytes):
 *
 * blk_read_mbps      4 MiB read sequentially from 1 MiB into the disk, in
 *                    64 KiB requests (16 page-sized buffers each), 4 in flight
 * blk_write_mbps     the same written, then one FLUSH, all timed; only with
 *                    the word `diskwrite` (it overwrites those 4 MiB)
 */
#include "virtio.h"

#define NULL_HCALLS   1000
#define SYSCALLS      20000
#define FAULT_PAGES   256
#define YIELDS        200
#define PTE_BATCH     64
#define BATCHES       20
#define TIMER_ROUNDS  100

static void sort_u64(u64 *v, int n)
{
	for (int i = 1; i < n; i++)
		for (int j = i; j > 0 && v[j - 1] > v[j]; j--) {
			u64 t = v[j];
			v[j] = v[j - 1];
			v[j - 1] = t;
		}
}

static u64 task_cycles(struct task *t)
{
	return ((u64)t->result[7] << 32) | t->result[6];
}

#define BLK_BENCH_START  2048               /* sector: 1 MiB, clear of the self-test's record */
#define BLK_BENCH_BYTES  (4u << 20)

/* Sequential I/O over [start, start + bytes) with BLK_BUFS requests of
   BLK_BUF_SIZE in flight; MB/s times 10, or 0 if something failed. */
static u32 blk_stream(u32 type, u32 bytes)
{
	static struct blk_req rq[BLK_BUFS];
	enum { SEGS = BLK_BUF_SIZE / PAGE_SIZE };
	struct vbuf v[BLK_BUFS][SEGS];
	u32 chunks = bytes / BLK_BUF_SIZE, next = 0, done = 0, bad = 0;
	for (u32 b = 0; b < BLK_BUFS; b++)
		for (u32 i = 0; i < SEGS; i++)
			v[b][i] = (struct vbuf){ __pa(blk_bufs[b] + i * PAGE_SIZE), PAGE_SIZE };
	u64 c = rdtsc();
	for (u32 b = 0; b < BLK_BUFS && next < chunks; b++, next++)
		if (blk_submit(&rq[b], type, BLK_BENCH_START + (u64)next * (BLK_BUF_SIZE / SECTOR_SIZE),
			       v[b], SEGS))
			return 0;
	while (done < chunks) {
		struct blk_req *r = blk_complete();
		if (!r)
			return 0;
		done++;
		bad += r->status != VIRTIO_BLK_S_OK;
		if (next < chunks) {
			u32 b = (u32)(r - rq);
			if (blk_submit(r, type, BLK_BENCH_START + (u64)next * (BLK_BUF_SIZE / SECTOR_SIZE),
				       v[b], SEGS))
				return 0;
			next++;
		}
	}
	if (type == VIRTIO_BLK_T_OUT)
		bad += blk_flush() != VIRTIO_BLK_S_OK;
	u64 us = div_u64(cycles_to_ns(rdtsc() - c), 1000, NULL);   /* bytes per us = MB/s */
	if (bad || !us || us > 0xFFFFFFFFull)
		return 0;
	return (u32)div_u64((u64)chunks * BLK_BUF_SIZE * 10, (u32)us, NULL);
}

static void bench_block(char *out, size_t size)
{
	out[0] = 0;
	if (!vblk || vblk_capacity <= BLK_BENCH_START)
		return;
	u64 room = (vblk_capacity - BLK_BENCH_START) * SECTOR_SIZE;
	u32 bytes = room < BLK_BENCH_BYTES ? (u32)room & ~(BLK_BUF_SIZE - 1) : BLK_BENCH_BYTES;
	if (!bytes)
		return;
	u32 w = 0, r;
	int writes = !vblk_readonly && blk_may_write();
	if (writes) {
		console_mark("@b:blkwrite\n");
		w = blk_stream(VIRTIO_BLK_T_OUT, bytes);
		console_mark("@e:blkwrite\n");
	}
	console_mark("@b:blkread\n");
	r = blk_stream(VIRTIO_BLK_T_IN, bytes);
	console_mark("@e:blkread\n");
	if (!writes)
		snprintf(out, size, " blk_read_mbps=%u.%u", r / 10, r % 10);
	else
		snprintf(out, size, " blk_read_mbps=%u.%u blk_write_mbps=%u.%u",
			 r / 10, r % 10, w / 10, w % 10);
}

static struct task *run_one(u32 prog, u32 arg)
{
	struct task *t = task_create_user("bench", prog, arg);
	task_start(t);
	task_wait(t);
	return t;
}

void bench_run(void)
{
	u64 c;
	tick_stop();                       /* no tick in the measurements */

	console_mark("@b:hcall\n");
	irq_disable();
	c = rdtsc();
	for (int i = 0; i < NULL_HCALLS; i++)
		hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
	c = rdtsc() - c;
	/* The mark first: an interrupt held back during the loop makes
	   irq_enable() ask for it (SEND_INTERRUPTS), an exit that is not
	   one of the loop's. */
	console_mark("@e:hcall\n");
	irq_enable();
	u64 null_hcall = div_u64(cycles_to_ns(c), NULL_HCALLS, NULL);

	/* The task's own start and end are inside the brackets: the Launcher
	   subtracts an empty run's exits (the "@b:task" pair). */
	console_mark("@b:task\n");
	struct task *t = run_one(PROG_BENCH_SYSCALL, 0);
	console_mark("@e:task\n");
	task_reap(t);

	console_mark("@b:syscall\n");
	t = run_one(PROG_BENCH_SYSCALL, SYSCALLS);
	console_mark("@e:syscall\n");
	u64 syscall_ns = div_u64(cycles_to_ns(task_cycles(t)), SYSCALLS, NULL);
	task_reap(t);

	console_mark("@b:fault\n");
	t = run_one(PROG_BENCH_FAULT, FAULT_PAGES);
	console_mark("@e:fault\n");
	u64 fault_ns = div_u64(cycles_to_ns(task_cycles(t)), FAULT_PAGES, NULL);
	task_reap(t);

	/* Two yielding tasks: while the first counts, each of its yields is
	   two switches (to the other task and back). */
	struct task *ts[2] = { task_create_user("yield-a", PROG_BENCH_YIELD, YIELDS),
			       task_create_user("yield-b", PROG_BENCH_YIELD, YIELDS) };
	console_mark("@b:switch\n");
	task_start(ts[0]);
	task_start(ts[1]);
	task_wait(ts[0]);
	task_wait(ts[1]);
	console_mark("@e:switch\n");
	u64 switch_ns = div_u64(cycles_to_ns(task_cycles(ts[0])), 2 * YIELDS, NULL);
	task_reap(ts[0]);
	task_reap(ts[1]);

	u32 pa = page_alloc();
	u64 total = 0;
	for (int b = 0; b < BATCHES; b++) {
		if (b == 0)
			console_mark("@b:ptebatch\n");
		c = rdtsc();
		lazy_begin();
		for (u32 i = 0; i < PTE_BATCH; i++)
			mm_set_pte(&kernel_mm, test_area + i * PAGE_SIZE, (pte_t)pa | PTE_KERNEL);
		lazy_end();
		total += rdtsc() - c;
		if (b == 0)
			console_mark("@e:ptebatch\n");
		lazy_begin();
		for (u32 i = 0; i < PTE_BATCH; i++)
			mm_set_pte(&kernel_mm, test_area + i * PAGE_SIZE, 0);
		flush_tlb_kernel();
		lazy_end();
	}
	page_free(pa);
	u64 batch_ns = div_u64(cycles_to_ns(total), BATCHES, NULL);

	static u64 lat[TIMER_ROUNDS];
	total = 0;
	console_mark("@b:timer\n");
	for (int i = 0; i < TIMER_ROUNDS; i++) {
		u32 before = timer_irqs;
		irq_disable();
		c = rdtsc();
		clockevent_set(1000000);
		while (timer_irqs == before) {
			hcall(LHCALL_HALT, 0, 0, 0, 0);
			irq_disable();
		}
		irq_enable();
		u64 late = cycles_to_ns(timer_irq_tsc - c);
		lat[i] = late > 1000000 ? late - 1000000 : 0;
		total += lat[i];
	}
	console_mark("@e:timer\n");
	u64 timer_ns = div_u64(total, TIMER_ROUNDS, NULL);
	sort_u64(lat, TIMER_ROUNDS);
	u64 timer_median = lat[TIMER_ROUNDS / 2];
	u64 timer_p99 = lat[(TIMER_ROUNDS * 99) / 100];

	/* Disk I/O with the tick back on: its 10 ms do not matter there, and
	   a wait on the disk always has something to wake it. */
	tick_start(10000000);
	char blk[64];
	bench_block(blk, sizeof(blk));

	kprintf("bench: null_hypercall_ns=%llu syscall_ns=%llu pagefault_ns=%llu "
		"ctxswitch_ns=%llu pte_batch_ns=%llu timer_latency_ns=%llu "
		"timer_latency_median_ns=%llu timer_latency_p99_ns=%llu tsc_khz=%u%s\n",
		null_hcall, syscall_ns, fault_ns, switch_ns, batch_ns, timer_ns,
		timer_median, timer_p99, lguest_data.tsc_khz, blk);
}

/*
 * `idle=SECONDS`: do nothing for that long, bracketed by "@b:idle" and
 * "@e:idle", so the Launcher can count what keeping an idle guest costs
 * (launcher-bench's idle_exits_per_s). With the periodic tick, every tick is
 * a clock event, an interrupt and a HALT; with `tick=oneshot` the tick is
 * stopped and one clock event (at most ~4 s ahead: the delta is 32 bits)
 * wakes us for the end, as a tickless Linux sleeps.
 */
static void idle_for(u64 ns, int oneshot)
{
	const u32 max_delta_ns = 4000000000u;
	u64 end = now_ns() + ns;
	u32 flags = irq_save();
	for (;;) {
		u64 now = now_ns();
		if (now >= end)
			break;
		if (oneshot) {
			u64 left = end - now;
			clockevent_set(left > max_delta_ns ? max_delta_ns : (u32)left + 1);
		}
		hcall(LHCALL_HALT, 0, 0, 0, 0);        /* "sti; hlt" */
		irq_disable();
	}
	irq_restore(flags);
}

void idle_run(u32 seconds, int oneshot)
{
	u32 ticks = timer_irqs;

	if (oneshot)
		tick_stop();
	/* Let the console's last interrupts come in before the window opens. */
	console_flush();
	idle_for(500000000u, oneshot);
	console_mark("@b:idle\n");
	idle_for((u64)seconds * 1000000000u, oneshot);
	console_mark("@e:idle\n");
	if (oneshot)
		tick_start(TICK_NS);
	kprintf("idle: %u s (%s tick), %u clock interrupts\n", seconds,
		oneshot ? "one-shot" : "periodic", timer_irqs - ticks);
}
