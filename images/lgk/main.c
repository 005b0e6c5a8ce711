/*
 * main.c - kmain(): what lgk does, in order, once head.S has made
 * LGUEST_INIT, switched to the boot page tables and jumped here.
 */
#include "virtio.h"

#define FALLBACK_MEM (16u << 20)      /* same as head.S */

extern u32 boot_params_pa;            /* head.S: the esi we started with */
u32 mem_size;
char cmdline[256];
int mem_guessed;                      /* no e820 map: mem_size is a guess */

#ifdef CONFIG_PAE
#define PAGING "PAE"
#else
#define PAGING "non-PAE"
#endif

/* boot_params (docs/abi.md §1.2): the Launcher fills in e820 entry 0 (all
   of RAM) and a pointer to the command line. We read nothing else. */
static void read_mem_size(void)
{
	const u8 *bp = __va(boot_params_pa);
	u32 entries = bp[0x1E8];
	u64 size = *(const u64 *)(bp + 0x2D8);
	if (entries && size) {
		mem_size = size > 0xFFFFF000u ? 0xFFFFF000u : (u32)size;
	} else {
		mem_size = FALLBACK_MEM;
		mem_guessed = 1;
	}
}

static void read_cmdline(void)
{
	const u8 *bp = __va(boot_params_pa);
	u32 ptr = *(const u32 *)(bp + 0x228);
	if (ptr && ptr < lowmem_end - sizeof(cmdline)) {
		const char *src = __va(ptr);
		u32 n = 0;
		while (n < sizeof(cmdline) - 1 && src[n]) {
			cmdline[n] = src[n];
			n++;
		}
		cmdline[n] = 0;
	}
}

/* The command line is words separated by spaces. */
static const char *find_word(const char *word, size_t len, int with_value)
{
	const char *p = cmdline;
	while (*p) {
		while (*p == ' ')
			p++;
		const char *start = p;
		while (*p && *p != ' ')
			p++;
		size_t n = (size_t)(p - start);
		if (with_value ? (n > len && !strncmp(start, word, len) && start[len] == '=')
			       : (n == len && !strncmp(start, word, len)))
			return start;
	}
	return NULL;
}

int cmdline_has(const char *word)
{
	return find_word(word, strlen(word), 0) != NULL;
}

const char *cmdline_value(const char *key)
{
	static char value[64];
	size_t len = strlen(key), n = 0;
	const char *w = find_word(key, len, 1);
	if (!w)
		return NULL;
	for (w += len + 1; *w && *w != ' ' && n < sizeof(value) - 1; w++)
		value[n++] = *w;
	value[n] = 0;
	return value;
}

/* A decimal number, or fallback if s is missing, empty or not all digits. */
u32 parse_u32(const char *s, u32 fallback)
{
	u32 v = 0;
	if (!s || !*s)
		return fallback;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return fallback;
		v = v * 10 + (u32)(*s - '0');
	}
	return v;
}

u32 cmdline_u32(const char *key, u32 fallback)
{
	return parse_u32(cmdline_value(key), fallback);
}

/* `echo`: one line from the console, back out. The default run never
   reads input, so it never waits for anyone. */
static void echo_line(void)
{
	char line[128];
	kprintf("lgk: echo: waiting for a line on the console\n");
	if (vconsole_read_line(line, sizeof(line)) < 0)
		kprintf("echo: (end of input)\n");
	else
		kprintf("echo: %s\n", line);
}

void kmain(void)
{
	/* head.S made these two calls before C could count them. */
	hcall_counts[LHCALL_LGUEST_INIT]++;
	hcall_counts[LHCALL_NEW_PGTABLE]++;
	kprintf("lgk: the lguest-on-KVM teaching kernel (" PAGING ")\n");

	read_mem_size();
	segments_init();                  /* GDT: kernel and user segments */
	traps_init();                     /* IDT: exceptions, IRQs, int $0x80 */
	mm_init();                        /* our own page tables for all of RAM */
	read_cmdline();
	/* `igate80`: system calls through an interrupt gate, as Linux 4.x makes
	   them, which the Host cannot let the CPU deliver directly. */
	if (cmdline_has("igate80"))
		set_idt_gate(LGUEST_SYSCALL_VECTOR, trap_stubs[64], GATE_INTERRUPT, 3);
	timer_init();                     /* IRQ 0 unmasked */
	sched_init();                     /* we are task 0 */
	irq_enable();
	tick_start(TICK_NS);

	kprintf("lgk: %u MiB%s, reserve_mem %x, tsc %u kHz, command line \"%s\"\n",
		mem_size >> 20, mem_guessed ? " (no e820 map: guessed)" : "",
		lguest_data.reserve_mem, lguest_data.tsc_khz, cmdline);

	/* The lguest bus: the console first, so that everything after this
	   goes through it, then whatever else the Launcher was given. */
	virtio_init();
	vconsole_init();
	vblock_init();
	vrng_init();

	const char *hostile = cmdline_value("hostile");
	if (hostile)
		hostile_run(hostile);             /* ends with the Host killing us */

	int bench = cmdline_has("bench"), restart = cmdline_has("restart");
	int echo = cmdline_has("echo");
	/* The robustness tests' workloads (devtest.c); each ends the run
	   itself if something goes wrong. */
	int records = cmdline_has("records") || cmdline_value("records");
	int soak = cmdline_value("soak") != NULL, net = cmdline_value("net") != NULL;
	int idle = cmdline_value("idle") != NULL;
	if (echo)
		echo_line();
	int failures = 0;
	if (cmdline_has("selftest") || (!bench && !restart && !echo && !records && !soak && !net
				       && !idle))
		failures = selftest_run();
	if (bench)
		bench_run();
	if (idle) {
		const char *tick = cmdline_value("tick");
		idle_run(cmdline_u32("idle", 5), tick && !strncmp(tick, "oneshot", 8));
	}
	if (net)
		net_run(cmdline_u32("net", 10));
	if (soak)
		soak_run(cmdline_u32("soak", 60));
	if (records)
		records_run(cmdline_u32("records", 1));
	if (restart && !failures) {
		kprintf("lgk: restarting\n");
		shutdown("Restarting", LGUEST_SHUTDOWN_RESTART);
	}
	if (failures) {
		static char msg[64];
		snprintf(msg, sizeof(msg), "lgk: %d self-test%s failed", failures,
			 failures == 1 ? "" : "s");
		shutdown(msg, LGUEST_SHUTDOWN_POWEROFF);
	}
	shutdown("Power down", LGUEST_SHUTDOWN_POWEROFF);
}
