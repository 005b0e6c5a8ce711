/*
 * hostile.c - lgk misbehaving on purpose, for the Host's robustness tests.
 *
 *   hostile=MODE            run MODE's attacks in order until the Host kills us
 *   hostile=MODE step=N     run only attack N
 *   seed=N                  the random numbers' seed (default 1)
 *
 * Every mode is a list of attacks. Most are things the Host must refuse: it
 * kills the guest and says why, and that ends the run, as it should. A few
 * are things it may shrug off (an entry it ignores): we note that and go on.
 * If a refusable attack is let through we say so, and when the list runs
 * out the run ends with a crash ("hostile: MODE: the Host let ... pass"),
 * which the tests count as a failure. A run of harmless attacks only
 * (`step=N` naming one) ends with a normal power-off. Before each attack we
 * flush the console, so its line is out before the Host ends the run.
 *
 * The modes:
 *   hcall    random hypercall numbers and arguments
 *   gdt      bad GDT, TLS and IDT descriptors, bad selectors
 *   pgtable  page-table entries outside RAM or at the Switcher (0xFFC00000)
 *   vqloop   descriptor chains that loop, on the console's output queue
 *   vqrange  descriptors and ring indexes outside RAM or the ring
 *   notify   a storm of NOTIFYs with random values, then values beyond RAM
 *   clock    the clock interrupt (the Switcher's own delivery and Python's),
 *            then a device's (the rng's: run with --rng), delivered into the
 *            Switcher's pages or onto a bad stack
 */
#include "virtio.h"

#define SWITCHER_BASE  0xFFC00000u      /* the Host's region: its code, GDT, IDT, TSS */
#define WAIT_FOR_KILL_NS 10000000000ull  /* a device thread's verdict may take a moment */

struct attack {
	const char *what;
	void (*run)(void);
	int fatal;                      /* the Host must refuse it */
};

/* ---- small helpers ---------------------------------------------------------------- */
static u32 rng_state = 1;

static u32 rnd(void)                    /* xorshift32: the same run for the same seed */
{
	u32 x = rng_state;
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return rng_state = x;
}


static u8 zero_page[PAGE_SIZE] __attribute__((aligned(PAGE_SIZE)));

/* A native PTE write in the test area (no SET_PTE: the Host is not told). */
static pte_t *test_pte(u32 index)
{
	return mm_walk(&kernel_mm, test_area + index * PAGE_SIZE, 0, 0);
}

/* Give a Host that decided to kill us the chance to do it: a few exits. */
static void wait_for_kill(void)
{
	u64 end = now_ns() + WAIT_FOR_KILL_NS;
	while (now_ns() < end)
		hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
}

/* The queue we misuse: the console's output. After the attack, our own
   bookkeeping of it is wrong, so the rest goes to the early console. */
static struct virtqueue *victim_queue(void)
{
	if (!vcon)
		panic("hostile: no virtio console to misuse");
	console_flush();
	console_virtio = 0;
	return &vcon->vq[1];
}

/* Put a chain head into the avail ring ourselves and kick. */
static void offer_raw(struct virtqueue *vq, u16 head)
{
	vq->avail->ring[vq->avail_idx % vq->num] = head;
	barrier();
	vq->avail->idx = ++vq->avail_idx;
	vq_mb();
	hcall(LHCALL_NOTIFY, vq->ring_pa, 0, 0, 0);   /* whatever NO_NOTIFY says */
}

static void set_desc(struct virtqueue *vq, u32 i, u64 addr, u32 len, u16 flags, u16 next)
{
	vq->desc[i].addr = addr;
	vq->desc[i].len = len;
	vq->desc[i].flags = flags;
	vq->desc[i].next = next;
}

/* ---- hcall: random hypercalls --------------------------------------------------------- */
static u32 random_arg(void)
{
	switch (rnd() % 6) {
	case 0: return 0;
	case 1: return rnd() % 64;
	case 2: return (rnd() % mem_size) & ~(PAGE_SIZE - 1);   /* a page of RAM */
	case 3: return rnd() % mem_size;                         /* somewhere in RAM */
	case 4: return PAGE_OFFSET + rnd() % mem_size;           /* a kernel address */
	default: return rnd();
	}
}

static void hcall_random(void)
{
	/* Everything but SHUTDOWN (a clean exit, not a refusal) and HALT (with
	   a random clock event it could sleep for ever: our hang, not the Host's). */
	static const u8 known[] = {
		LHCALL_FLUSH_ASYNC, LHCALL_LGUEST_INIT, LHCALL_NEW_PGTABLE, LHCALL_FLUSH_TLB,
		LHCALL_LOAD_IDT_ENTRY, LHCALL_SET_STACK, LHCALL_TS, LHCALL_SET_CLOCKEVENT,
		LHCALL_SET_PMD, LHCALL_SET_PTE, LHCALL_SET_PGD, LHCALL_LOAD_TLS, LHCALL_NOTIFY,
		LHCALL_LOAD_GDT_ENTRY, LHCALL_SEND_INTERRUPTS,
	};
	static const u8 unused[] = { 3, 11, 12, 20, 21, 31, 63, 255 };
	static const u8 bad_gate_types[] = { 0x5, 0xC, 0x6, 0x7 };
	for (u32 n = 1; n <= 100000; n++) {
		u32 call, r = rnd() % 16;
		if (r < 14)
			call = known[rnd() % sizeof(known)];
		else if (r < 15)
			call = unused[rnd() % sizeof(unused)];
		else
			call = rnd();
		u32 a1 = random_arg(), a2 = random_arg(), a3 = random_arg(), a4 = random_arg();
		if (call == LHCALL_LOAD_IDT_ENTRY && a1 < 256)
			/* A gate we could take ourselves would only crash us: make it
			   one the Host must refuse (task, call, 16-bit gates). */
			a3 = (a3 & 0xFFFF0000u) | 0x8000u | ((u32)bad_gate_types[rnd() % 4] << 8);
		if (call == LHCALL_NOTIFY && a1 < mem_size)
			a1 = __pa(zero_page) + (a1 & 0xFFE);     /* no junk on the console */
		kprintf("hostile: hcall #%u: %u(%x, %x, %x, %x)\n", n, call, a1, a2, a3, a4);
		console_flush();
		hcall(call, a1, a2, a3, a4);
	}
}

/* ---- gdt: descriptors and selectors ----------------------------------------------------- */
static void gdt_host_entries(void)
{
	u64 junk = 0x00CF9A000000FFFFull;               /* flat ring-0 code */
	load_gdt_entry(10, junk);
	load_gdt_entry(11, ~0ull);
	load_gdt_entry(16, junk);
	load_gdt_entry(31, 0x0000890000000000ull);      /* a TSS */
	static const u32 ignored[] = { 2, 8, 15, LGUEST_TRAP_ENTRY };
	for (u32 i = 0; i < ARRAY_SIZE(ignored); i++)
		hcall(LHCALL_LOAD_IDT_ENTRY, ignored[i], 0x12345678, 0xFFFF8500, 0);
	u32 n = last_trap.count;
	__asm__ __volatile__("int3");
	hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
	kprintf("hostile: still running, int3 %s\n", last_trap.count == n + 1 ? "works" : "LOST");
}

static void gdt_index_32(void)
{
	load_gdt_entry(32, make_segment(0, 0xFFFFF, 0x2, 0));
}

static void idt_vector_256(void)
{
	set_idt_gate(256, trap_stubs[3], GATE_TRAP, 0);
}

static void idt_task_gate(void)
{
	u32 low = (16u << 3) << 16, high = (1u << 15) | (0x5u << 8);    /* the Host's TSS */
	hcall(LHCALL_LOAD_IDT_ENTRY, 0x40, low, high, 0);
}

static void tls_not_present(void)
{
	u64 tls[3] = { make_segment(0, 0xFFFFF, 0x2, 3), 0, 0 };
	hcall(LHCALL_LOAD_TLS, __pa(tls), 0, 0, 0);
	__asm__ __volatile__("movl %0, %%gs" : : "r"(TLS_SEL(0)));
	tls[0] &= ~(1ull << 47);                          /* not present, while gs holds it */
	hcall(LHCALL_LOAD_TLS, __pa(tls), 0, 0, 0);
	__asm__ __volatile__("movl %0, %%gs" : : "r"(0));
}

static void kernel_cs_data(void)
{
	load_gdt_entry(12, make_segment(0, 0xFFFFF, 0x2, 0));   /* our CS, as a data segment */
}

static void pf_gate_missing(void)
{
	u32 v;
	hcall(LHCALL_LOAD_IDT_ENTRY, 14, 0, 0, 0);      /* not present */
	probe_read32(kernel_hole, &v);
}

static void stack_ring0(void)
{
	hcall(LHCALL_SET_STACK, 0x68, current->kstack_top, 1, 0);
}

static void stack_unmapped(void)
{
	hcall(LHCALL_SET_STACK, KERNEL_DS, kernel_hole + PAGE_SIZE, 1, 0);
}

/* ---- pgtable: entries outside RAM, or at the Switcher ----------------------------------- */
static u32 beyond_ram(void)
{
	return ALIGN_UP(virtio_bus_limit ? virtio_bus_limit : mem_size, 4u << 20) + (16u << 20);
}

static void pte_beyond_ram(void)
{
	u32 va = test_area + PAGE_SIZE;
	*test_pte(1) = (pte_t)beyond_ram() | PTE_KERNEL;
	mm_set_pte(&kernel_mm, va, (pte_t)beyond_ram() | PTE_KERNEL);
}

static void pte_in_switcher_region(void)
{
	u32 pa = page_alloc();
	hcall(LHCALL_SET_PTE, kernel_mm.top_pa, SWITCHER_BASE, pa | PTE_KERNEL, 0);
}

static void pte_native_beyond_ram(void)
{
	u32 v = 0, va = test_area + 2 * PAGE_SIZE;
	*test_pte(2) = (pte_t)beyond_ram() | PTE_KERNEL;   /* never reported */
	int r = probe_read32(va, &v);
	kprintf("hostile: read %d: %x\n", r, v);
}

static void pde_beyond_ram(void)
{
	const u32 va = 0x50000000;           /* nothing there */
	u32 v = 0;
#ifdef CONFIG_PAE
	/* A PMD entry: the PMD of the top gigabyte is ours, slot 0x1F0 is unused. */
	u32 j = 0x1F0;
	kernel_pmd[j] = (u64)beyond_ram() | TABLE_KERNEL;
	hcall(LHCALL_SET_PMD, __pa(kernel_pmd), j, 0, 0);
	int r = probe_read32(PAGE_OFFSET + (j << 21), &v);
	(void)va;
#else
	u32 i = va >> 22;
	((u32 *)kernel_mm.top)[i] = beyond_ram() | TABLE_KERNEL;
	hcall(LHCALL_SET_PGD, kernel_mm.top_pa, i, 0, 0);
	int r = probe_read32(va, &v);
#endif
	kprintf("hostile: read through it: %d (%x)\n", r, v);
}

static void pte_switcher_pages(void)
{
	u32 v = 0, va = test_area + 3 * PAGE_SIZE;
	*test_pte(3) = (pte_t)SWITCHER_BASE | PTE_KERNEL;  /* never reported */
	int r = probe_read32(va, &v);
	kprintf("hostile: reading the Switcher's first page: %d (%x); now writing it\n", r, v);
	console_flush();
	*(volatile u32 *)va = 0xDEADBEEF;
	hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
	r = probe_read32(va, &v);
	kprintf("hostile: the write went by, the page reads %x\n", v);
}

static void new_pgtable_beyond_ram(void)
{
	hcall(LHCALL_NEW_PGTABLE, beyond_ram(), 0, 0, 0);
}

/*
 * The Switcher runs at 0xFFC00000 in *our* address space: the Host puts its
 * page table into our top level (non-PAE: PDE 1023; PAE: PMD slot 510). We
 * can overwrite that entry ourselves and flush. Our replacement is a copy
 * of the Host's table (which we can read: it is in the Switcher's writable
 * pages), except that the Switcher's two code pages become pages of ours.
 * The next time the Switcher runs its own code, it runs ours, at ring 0.
 */
static void switcher_code_replaced(int spin)
{
	u32 table = page_alloc();
#ifdef CONFIG_PAE
	u64 *slot = &kernel_pmd[510];
#else
	u32 *slot = &((u32 *)kernel_mm.top)[1023];
#endif
	/* Read the Host's table through a PTE of our own, and copy it. */
	u32 host_table = (u32)*slot & ~0xFFFu;
	*test_pte(4) = (pte_t)host_table | PTE_KERNEL;
	memcpy(__va(table), (void *)(test_area + 4 * PAGE_SIZE), PAGE_SIZE);
	pte_t *t = __va(table);
	kprintf("hostile: the Switcher's table is at %x, its first entries %x %x\n",
		host_table, (u32)t[0], (u32)t[1]);
	for (int i = 0; i < 2; i++) {
		u32 code = page_alloc();
		u8 *c = __va(code);
		if (spin) {               /* nops, then `jmp .`: interrupts are off in there */
			memset(c, 0x90, PAGE_SIZE);
			c[PAGE_SIZE - 2] = 0xEB;
			c[PAGE_SIZE - 1] = 0xFE;
		} else {
			memset(c, 0xF4, PAGE_SIZE);           /* hlt */
		}
		t[i] = (pte_t)code | 0x063;
	}
	console_flush();
	*slot = table | TABLE_KERNEL;
	hcall(LHCALL_FLUSH_TLB, 1, 0, 0, 0);
}

static void switcher_code_hlt(void) { switcher_code_replaced(0); }
static void switcher_code_spin(void) { switcher_code_replaced(1); }

/* ---- vqloop and vqrange: bad chains on the console's output queue ---------------------- */
static u8 vq_data[64];

static void vq_two_loop(void)
{
	struct virtqueue *vq = victim_queue();
	u32 a = vq->num - 1, b = vq->num - 2;
	set_desc(vq, a, __pa(vq_data), 8, VRING_DESC_F_NEXT, (u16)b);
	set_desc(vq, b, __pa(vq_data), 8, VRING_DESC_F_NEXT, (u16)a);
	offer_raw(vq, (u16)a);
}

static void vq_self_loop(void)
{
	struct virtqueue *vq = victim_queue();
	u32 a = vq->num - 1;
	set_desc(vq, a, __pa(vq_data), 8, VRING_DESC_F_NEXT, (u16)a);
	offer_raw(vq, (u16)a);
}

static void vq_next_past_ring(void)
{
	struct virtqueue *vq = victim_queue();
	u32 a = vq->num - 1;
	set_desc(vq, a, __pa(vq_data), 8, VRING_DESC_F_NEXT, (u16)(vq->num + 44));
	offer_raw(vq, (u16)a);
}

static struct vring_desc indirect[4] __attribute__((aligned(16)));

static void vq_indirect_loop(void)
{
	struct virtqueue *vq = victim_queue();
	u32 a = vq->num - 1;
	indirect[0] = (struct vring_desc){ __pa(vq_data), 8, VRING_DESC_F_NEXT, 1 };
	indirect[1] = (struct vring_desc){ __pa(vq_data), 8, VRING_DESC_F_NEXT, 0 };
	set_desc(vq, a, __pa(indirect), sizeof(indirect), VRING_DESC_F_INDIRECT, 0);
	offer_raw(vq, (u16)a);
}

static void vq_indirect_nested(void)
{
	struct virtqueue *vq = victim_queue();
	u32 a = vq->num - 1;
	indirect[0] = (struct vring_desc){ __pa(indirect), sizeof(indirect), VRING_DESC_F_INDIRECT, 0 };
	set_desc(vq, a, __pa(indirect), sizeof(indirect), VRING_DESC_F_INDIRECT, 0);
	offer_raw(vq, (u16)a);
}

static void vq_addr_beyond_ram(void)
{
	struct virtqueue *vq = victim_queue();
	u32 a = vq->num - 1;
	set_desc(vq, a, beyond_ram(), 16, 0, 0);
	offer_raw(vq, (u16)a);
}

static void vq_len_past_end(void)
{
	struct virtqueue *vq = victim_queue();
	u32 a = vq->num - 1;
	set_desc(vq, a, virtio_bus_limit - 16, PAGE_SIZE, 0, 0);
	offer_raw(vq, (u16)a);
}

static void vq_addr_wraps(void)
{
	struct virtqueue *vq = victim_queue();
	u32 a = vq->num - 1;
	set_desc(vq, a, 0xFFFFFFFFFFFFF000ull, 0x2000, 0, 0);
	offer_raw(vq, (u16)a);
}

static void vq_avail_jump(void)
{
	struct virtqueue *vq = victim_queue();
	vq->avail_idx = (u16)(vq->avail_idx + 1000);
	vq->avail->idx = vq->avail_idx;
	vq_mb();
	hcall(LHCALL_NOTIFY, vq->ring_pa, 0, 0, 0);
}

static void vq_head_past_ring(void)
{
	struct virtqueue *vq = victim_queue();
	offer_raw(vq, (u16)(vq->num + 1000));
}

static void blk_no_status(void)
{
	static struct { u32 type, ioprio; u64 sector; } hdr;
	if (!vblk) {
		kprintf("hostile: no block device: nothing to try\n");
		return;
	}
	struct virtqueue *vq = &vblk->vq[0];
	u32 a = vq->num - 1;
	console_flush();
	set_desc(vq, a, __pa(&hdr), sizeof(hdr), 0, 0);  /* a header, no status byte */
	offer_raw(vq, (u16)a);
}

/* ---- notify: a storm ---------------------------------------------------------------------- */
static void notify_storm(void)
{
	u32 values[16], n = 0;
	for (u32 t = VIRTIO_ID_NET; t <= VIRTIO_ID_RNG; t++)
		for (int k = 0; k < 4; k++) {
			struct virtio_device *d = virtio_find((u8)t, k);
			if (!d)
				break;
			if (n < ARRAY_SIZE(values))
				values[n++] = d->desc_pa;         /* "status changed": it did not */
			for (u32 q = 0; q < d->nvq && n < ARRAY_SIZE(values); q++) {
				struct lguest_vqconfig c;      /* a kick with nothing new */
				memcpy(&c, &d->vqcfg[q], sizeof(c));
				values[n++] = c.pfn << 12;
			}
		}
	console_flush();
	for (u32 i = 0; i < 5000; i++) {
		u32 v = rnd();
		if (n && (v & 1))
			v = values[(v >> 1) % n];
		else
			v = __pa(zero_page) + (v & 0xFFE);  /* an empty early-console string */
		hcall(LHCALL_NOTIFY, v, 0, 0, 0);
	}
	kprintf("hostile: 5000 NOTIFYs of rings, descriptors and empty strings: fine\n");
}

static void notify_reset_restart(void)
{
	struct virtio_device *d = vrng ? vrng : vblk;
	if (!d) {
		kprintf("hostile: no rng or block device to reset\n");
		return;
	}
	console_flush();
	for (int i = 0; i < 20; i++) {
		d->desc->status = 0;                              /* reset */
		hcall(LHCALL_NOTIFY, d->desc_pa, 0, 0, 0);
		d->desc->status = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER;
		hcall(LHCALL_NOTIFY, d->desc_pa, 0, 0, 0);       /* start again */
		d->desc->status |= VIRTIO_STATUS_DRIVER_OK;
	}
	kprintf("hostile: %s reset and restarted 20 times\n", d->name);
}

static void notify_started_twice(void)
{
	struct virtio_device *d = vcon;
	console_flush();
	d->desc->status = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER;  /* no reset */
	hcall(LHCALL_NOTIFY, d->desc_pa, 0, 0, 0);
}

static void notify_in_bus_page(void)
{
	hcall(LHCALL_NOTIFY, virtio_bus_pa + 1, 0, 0, 0);
}

static void notify_beyond_ram(void)
{
	for (u32 i = 0; i < 1000; i++) {
		u32 v = rnd();
		if (v >= mem_size)
			hcall(LHCALL_NOTIFY, v, 0, 0, 0);
	}
}

/* ---- clock: what the clock interrupt is delivered into ------------------------------------ */
/* Arm a 1 ms clock event with interrupts on and spin on `stack` (0: our
   own) for 200 ms of TSC time, calling nothing: the tick must arrive in
   between, and the Host must refuse to deliver it. */
static u64 spin_cycles, spin_start;     /* static: the asm runs on a foreign stack */
static u32 spin_saved_esp;

static void tick_while_on(u32 stack)
{
	spin_cycles = (u64)lguest_data.tsc_khz * 200;
	console_flush();
	irq_enable();
	clockevent_set(1000000);
	spin_start = rdtsc();
	__asm__ __volatile__(
		"movl %%esp, %[saved]\n\t"
		"testl %[stack], %[stack]\n\t"
		"jz 1f\n\t"
		"movl %[stack], %%esp\n"
		"1:\tpause\n\t"
		"rdtsc\n\t"
		"subl %[lo], %%eax\n\t"
		"sbbl %[hi], %%edx\n\t"
		"cmpl %[clo], %%eax\n\t"
		"movl %%edx, %%ecx\n\t"
		"sbbl %[chi], %%ecx\n\t"
		"jb 1b\n\t"
		"movl %[saved], %%esp"
		: [saved] "=m"(spin_saved_esp)
		: [stack] "b"(stack), [lo] "m"(*(u32 *)&spin_start),
		  [hi] "m"(((u32 *)&spin_start)[1]), [clo] "m"(*(u32 *)&spin_cycles),
		  [chi] "m"(((u32 *)&spin_cycles)[1])
		: "eax", "ecx", "edx", "cc", "memory");
	kprintf("hostile: 200 ms went by, %u clock interrupts\n", timer_irqs);
}

static void tick_gate_in_switcher(void)
{
	set_idt_gate(FIRST_EXTERNAL_VECTOR, (void *)(SWITCHER_BASE + 0x1000), GATE_INTERRUPT, 0);
	tick_while_on(0);
}

static void tick_stack_in_switcher(void)
{
	tick_while_on(SWITCHER_BASE + 0x5F00);          /* the Host's register page */
}

static void tick_stack_unmapped(void)
{
	tick_while_on(kernel_hole + 0x800);
}

/* ---- device interrupts: what a device's interrupt is delivered into ------------------------ */
static struct virtqueue *rng_queue(void)
{
	if (!vrng)
		panic("hostile: no rng device (run with --rng)");
	return &vrng->vq[0];
}

/* The rng's request answered while its IRQ is masked and interrupts are
   off: the IRQ is raised and waits for us. Returns its bit. */
static u32 rng_irq_raised_masked(void)
{
	static char buf[16], token;
	struct vbuf v = { __pa(buf), sizeof(buf) };
	struct virtqueue *vq = rng_queue();
	u32 bit = 1u << vq->irq;
	console_flush();
	irq_disable();
	lguest_data.blocked_interrupts[0] |= bit;
	if (vq_add(vq, &v, 0, 1, &token) < 0)
		panic("hostile: the rng's queue is full");
	vq_kick(vq);
	while (vq->used->idx == vq->last_used)
		__asm__ __volatile__("pause" ::: "memory");
	return bit;
}

/* Unmask the waiting IRQ and HALT ("sti; hlt") with esp = `stack`: the
   IRQ is delivered at once, onto that stack. The hypercall itself pushes
   nothing there (it enters the Switcher's own stack). */
static void device_irq_onto(u32 stack)
{
	u32 bit = rng_irq_raised_masked();
	__asm__ __volatile__(
		"movl %%esp, %[saved]\n\t"
		"movl %[stack], %%esp\n\t"
		"notl %[bit]\n\t"
		"andl %[bit], %[blocked]\n\t"
		"int $0x1f\n\t"
		"movl %[saved], %%esp"
		: [saved] "=m"(spin_saved_esp), [blocked] "+m"(lguest_data.blocked_interrupts[0]),
		  [bit] "+r"(bit)
		: [stack] "r"(stack), "a"(LHCALL_HALT)
		: "cc", "memory");
	kprintf("hostile: the rng's interrupt came and went\n");
}

static void device_gate_in_switcher(void)
{
	static char buf[16];
	set_idt_gate(FIRST_EXTERNAL_VECTOR + rng_queue()->irq, (void *)(SWITCHER_BASE + 0x1000),
		     GATE_INTERRUPT, 0);
	console_flush();
	rng_read(buf, sizeof(buf));             /* waits in HALT for the interrupt */
}

static void device_stack_in_switcher(void)
{
	device_irq_onto(SWITCHER_BASE + 0x5F00);
}

static void device_stack_unmapped(void)
{
	device_irq_onto(kernel_hole + 0x800);
}

/* ---- the modes ------------------------------------------------------------------------------ */
#define ATTACKS(name) { #name, name##_attacks, ARRAY_SIZE(name##_attacks) }

static const struct attack hcall_attacks[] = {
	{ "random hypercall numbers and arguments", hcall_random, 1 },
};
static const struct attack gdt_attacks[] = {
	{ "GDT 10, 11, 16, 31 and IDT 2, 8, 15, 0x1F overwritten (must be ignored)", gdt_host_entries, 0 },
	{ "LOAD_GDT_ENTRY index 32", gdt_index_32, 1 },
	{ "LOAD_IDT_ENTRY vector 256", idt_vector_256, 1 },
	{ "LOAD_IDT_ENTRY task gate at vector 0x40", idt_task_gate, 1 },
	{ "TLS entry made not present while gs holds its selector", tls_not_present, 1 },
	{ "kernel CS (GDT 12) replaced by a data segment", kernel_cs_data, 1 },
	{ "#PF gate removed, then a page fault", pf_gate_missing, 1 },
	{ "SET_STACK with ss 0x68 (ring 0)", stack_ring0, 1 },
	{ "SET_STACK onto an unmapped page", stack_unmapped, 1 },
};
static const struct attack pgtable_attacks[] = {
	{ "SET_PTE of a page beyond RAM", pte_beyond_ram, 1 },
	{ "SET_PTE at 0xFFC00000, the Switcher's region", pte_in_switcher_region, 1 },
	{ "a PTE to a page beyond RAM, not reported, then read", pte_native_beyond_ram, 1 },
	{ "a top-level (PAE: middle) entry beyond RAM, reported, then read", pde_beyond_ram, 1 },
	{ "a PTE to the Switcher's pages (0xFFC00000), not reported: read, then write", pte_switcher_pages, 1 },
	{ "NEW_PGTABLE beyond RAM", new_pgtable_beyond_ram, 1 },
	{ "the Switcher's page-table entry replaced: its code becomes `hlt`", switcher_code_hlt, 1 },
	{ "the Switcher's page-table entry replaced: its code spins, interrupts off", switcher_code_spin, 1 },
};
static const struct attack vqloop_attacks[] = {
	{ "a chain of two descriptors pointing at each other", vq_two_loop, 1 },
	{ "a descriptor whose next is itself", vq_self_loop, 1 },
	{ "a next index past the ring", vq_next_past_ring, 1 },
	{ "an indirect table that loops", vq_indirect_loop, 1 },
	{ "an indirect table inside an indirect table", vq_indirect_nested, 1 },
};
static const struct attack vqrange_attacks[] = {
	{ "a buffer beyond RAM", vq_addr_beyond_ram, 1 },
	{ "a buffer running past the end of guest memory", vq_len_past_end, 1 },
	{ "a buffer whose end wraps around 2^64", vq_addr_wraps, 1 },
	{ "avail->idx 1000 entries ahead", vq_avail_jump, 1 },
	{ "an avail entry naming a descriptor past the ring", vq_head_past_ring, 1 },
	{ "a block request with no status byte", blk_no_status, 1 },
};
static const struct attack notify_attacks[] = {
	{ "a storm of NOTIFYs: rings, descriptors, strings", notify_storm, 0 },
	{ "a device reset and restarted, 20 times", notify_reset_restart, 0 },
	{ "NOTIFYs with random values beyond RAM", notify_beyond_ram, 1 },
	{ "NOTIFY of the bus page, naming no device", notify_in_bus_page, 1 },
	{ "a device started twice without a reset", notify_started_twice, 1 },
};

static const struct attack clock_attacks[] = {
	{ "the clock interrupt's gate pointing into the Switcher's region", tick_gate_in_switcher, 1 },
	{ "the kernel stack in the Switcher's register page when the clock fires", tick_stack_in_switcher, 1 },
	{ "the kernel stack on an unmapped page when the clock fires", tick_stack_unmapped, 1 },
	{ "a device interrupt's gate pointing into the Switcher's region", device_gate_in_switcher, 1 },
	{ "the kernel stack in the Switcher's register page when a device interrupt comes",
	  device_stack_in_switcher, 1 },
	{ "the kernel stack on an unmapped page when a device interrupt comes",
	  device_stack_unmapped, 1 },
};

static const struct {
	const char *name;
	const struct attack *attacks;
	u32 n;
} modes[] = {
	ATTACKS(hcall), ATTACKS(gdt), ATTACKS(pgtable), ATTACKS(vqloop), ATTACKS(vqrange),
	ATTACKS(notify), ATTACKS(clock),
};

void hostile_run(const char *mode)
{
	static char msg[96];
	u32 m = 0;
	while (m < ARRAY_SIZE(modes) && strncmp(mode, modes[m].name, 64))
		m++;
	if (m == ARRAY_SIZE(modes))
		panic("hostile=%s: no such mode (hcall gdt pgtable vqloop vqrange notify clock)", mode);
	rng_state = parse_u32(cmdline_value("seed"), 1) * 2654435761u + 1;   /* never 0 */
	u32 first = 0, last = modes[m].n - 1, let_pass = 0;
	const char *step = cmdline_value("step");
	if (step) {
		first = last = parse_u32(step, 0);
		if (first >= modes[m].n)
			panic("hostile=%s has attacks 0-%u, not step=%s", mode, modes[m].n - 1, step);
	}
	for (u32 i = first; i <= last; i++) {
		const struct attack *a = &modes[m].attacks[i];
		kprintf("hostile: %s %u: %s\n", modes[m].name, i, a->what);
		console_flush();
		a->run();
		if (a->fatal) {
			wait_for_kill();
			kprintf("hostile: %s %u: the Host let it pass\n", modes[m].name, i);
			let_pass++;
		}
	}
	if (!let_pass) {                  /* only attacks the Host may shrug off */
		kprintf("hostile: %s: survived, as it should\n", modes[m].name);
		shutdown("Power down", LGUEST_SHUTDOWN_POWEROFF);
	}
	snprintf(msg, sizeof(msg), "hostile: %s: the Host let %u attack%s pass", modes[m].name,
		 let_pass, let_pass == 1 ? "" : "s");
	shutdown(msg, LGUEST_SHUTDOWN_POWEROFF);
}
