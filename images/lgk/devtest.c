/*
 * devtest.c - self-tests of the devices on the lguest bus. Each runs only
 * when the Launcher gave us that device (`--block FILE`, `--rng`; the console
 * is always there), so a run without devices has fewer checks, not failures.
 *
 * By default the block tests only read: a disk handed to the bundled guest
 * may be somebody's real image, and every byte of it must stay as it was.
 * With the word `diskwrite` on the command line they also keep a record on
 * the disk, so that a second boot can see what the first one wrote: sectors
 * 0-127 (64 KiB) hold, per sector, the text "lgk-disk sector SSSSS boot
 * BBBBB\n" and then bytes (i*31 + S*7 + B) & 0xFF for offsets i = 33..511,
 * where B counts the boots that wrote the disk.
 * (tests/test_own_guest_devices_kvm.py computes the same bytes.)
 * Nothing else on the disk is touched, except by the benchmark (from 1 MiB,
 * also only with `diskwrite`) and the records= and soak= workloads.
 *
 * At the end, the workloads the robustness tests drive through the command
 * line (records=, soak=, net=): see "Workloads" below.
 */
#include "virtio.h"

#define RECORD_SECTORS 128                /* 64 KiB at sector 0 */
#define RECORD_TEXT    "lgk-disk sector "
#define RECORD_BOOT_AT 27                 /* "lgk-disk sector 00000 boot " */

static void fill_record(u8 *buf, u32 nsectors, u32 boot)
{
	for (u32 s = 0; s < nsectors; s++) {
		u8 *p = buf + s * SECTOR_SIZE;
		u32 n = (u32)snprintf((char *)p, SECTOR_SIZE, "lgk-disk sector %05u boot %05u\n", s, boot);
		for (u32 i = n; i < SECTOR_SIZE; i++)
			p[i] = (u8)(i * 31 + s * 7 + boot);
	}
}

/* The boot number in a record's first sector, or 0 if there is no record. */
static u32 record_boot(const u8 *buf)
{
	u32 boot = 0;
	if (memcmp(buf, RECORD_TEXT, sizeof(RECORD_TEXT) - 1))
		return 0;
	for (u32 i = RECORD_BOOT_AT; i < RECORD_BOOT_AT + 5; i++) {
		if (buf[i] < '0' || buf[i] > '9')
			return 0;
		boot = boot * 10 + (buf[i] - '0');
	}
	return boot;
}

static int first_difference(const u8 *a, const u8 *b, u32 n)
{
	for (u32 i = 0; i < n; i++)
		if (a[i] != b[i])
			return (int)i;
	return -1;
}

static void test_console(void)
{
	if (!vcon)
		return;
	struct virtqueue *q = &vcon->vq[1];
	u32 sent = vconsole_bufs_sent;
	kprintf("console: this line went out through virtio queue 1 (irq %u)\n", q->irq);
	int flushed = vconsole_flush();
	check("console_virtio", console_virtio && flushed == 0 && vconsole_bufs_sent == sent + 1 &&
	      q->last_used == q->avail_idx && (q->avail->flags & VRING_AVAIL_F_NO_INTERRUPT),
	      "virtio %d, flush %d, %u buffers sent, used %u of %u, avail flags %x",
	      console_virtio, flushed, vconsole_bufs_sent - sent, q->last_used, q->avail_idx,
	      q->avail->flags);
}

static void test_block(void)
{
	if (!vblk)
		return;
	u8 *w = blk_bufs[0], *r = blk_bufs[1];
	u64 cap = vblk_capacity;
	int may_write = blk_may_write();
	if (cap >= RECORD_SECTORS) {
		/* What an earlier boot left: all of it, or nothing. */
		memset(r, 0, BLK_BUF_SIZE);
		int st = blk_rw(VIRTIO_BLK_T_IN, 0, r, BLK_BUF_SIZE);
		u32 prev = record_boot(r);
		int diff = -1;
		if (prev) {
			fill_record(w, RECORD_SECTORS, prev);
			diff = first_difference(w, r, BLK_BUF_SIZE);
			kprintf("blk: found the record of boot %u\n", prev);
		} else {
			kprintf("blk: no record on the disk: a fresh disk\n");
		}
		check("blk_persist", st == VIRTIO_BLK_S_OK && diff < 0,
		      "read status %d, record of boot %u differs at byte %d", st, prev, diff);

		if (vblk_readonly) {
			st = blk_rw(VIRTIO_BLK_T_OUT, 0, w, SECTOR_SIZE);
			check("blk_readonly", st == VIRTIO_BLK_S_IOERR, "a write got status %d", st);
		} else if (!may_write) {
			kprintf("blk: read-only checks (the guest word `diskwrite` lets the "
				"self-test write its record over sectors 0-%u)\n", RECORD_SECTORS - 1);
		} else {
			/* Write the next record across 16 page-sized buffers, flush,
			   read it back into a cleared buffer, compare. */
			u32 boot = prev < 99999 ? prev + 1 : 1;
			fill_record(w, RECORD_SECTORS, boot);
			int sw = blk_rw(VIRTIO_BLK_T_OUT, 0, w, BLK_BUF_SIZE);
			int sf = blk_flush();
			memset(r, 0, BLK_BUF_SIZE);
			int sr = blk_rw(VIRTIO_BLK_T_IN, 0, r, BLK_BUF_SIZE);
			diff = first_difference(w, r, BLK_BUF_SIZE);
			check("blk_write_read", sw == VIRTIO_BLK_S_OK && sr == VIRTIO_BLK_S_OK && diff < 0,
			      "write %d, read %d, first difference at byte %d", sw, sr, diff);
			check("blk_flush", sf == VIRTIO_BLK_S_OK &&
			      virtio_has_feature(vblk, VIRTIO_BLK_F_FLUSH), "status %d", sf);
			kprintf("blk: wrote the record of boot %u (sectors 0-%u)\n", boot,
				RECORD_SECTORS - 1);
		}
	} else {
		kprintf("blk: the disk is smaller than 64 KiB: no data checks\n");
	}

	/* Past the end: an I/O error, and nothing written. (The write is tried
	   only with `diskwrite`: a Host that got it wrong must not cost a user
	   the last sector of a real image.) */
	int s1 = blk_rw(VIRTIO_BLK_T_IN, cap, r, SECTOR_SIZE);
	int s2 = vblk_readonly || !may_write ? VIRTIO_BLK_S_IOERR
			       : blk_rw(VIRTIO_BLK_T_OUT, cap - 1, w, 2 * SECTOR_SIZE);
	check("blk_past_end", s1 == VIRTIO_BLK_S_IOERR && s2 == VIRTIO_BLK_S_IOERR,
	      "read at %u: status %d; write across the end: status %d", (u32)cap, s1, s2);

	memset(r, 0, VIRTIO_BLK_ID_BYTES + 1);
	int si = blk_rw(VIRTIO_BLK_T_GET_ID, 0, r, VIRTIO_BLK_ID_BYTES);
	r[VIRTIO_BLK_ID_BYTES] = 0;
	if (si == VIRTIO_BLK_S_OK)
		kprintf("blk: id \"%s\"\n", (char *)r);
	check("blk_get_id", si == VIRTIO_BLK_S_OK && r[0], "status %d, id \"%s\"", si, (char *)r);

	int su = blk_rw(VIRTIO_BLK_T_SCSI_CMD, 0, NULL, 0);
	check("blk_unsupported", su == VIRTIO_BLK_S_UNSUPP, "SCSI_CMD got status %d", su);
}

static void test_rng(void)
{
	static u8 a[64] __attribute__((aligned(64))), b[64] __attribute__((aligned(64)));
	if (!vrng)
		return;
	int na = rng_read(a, sizeof(a)), nb = rng_read(b, sizeof(b));
	u32 nonzero = 0;
	for (u32 i = 0; i < sizeof(a); i++)
		nonzero += a[i] != 0;
	check("rng_bytes", na == 64 && nb == 64 && nonzero > 32 && memcmp(a, b, sizeof(a)),
	      "got %d and %d bytes, %u of 64 nonzero, the two %s", na, nb, nonzero,
	      memcmp(a, b, sizeof(a)) ? "differ" : "are the same");
}

/* The block and rng queues' interrupts arrived. A request can be seen
   finished in the used ring before its interrupt is delivered: the device
   thread raises it after writing the ring, and on a crowded host (twenty
   guests on two CPUs) it may wait seconds for a CPU in between. So wait
   long, and sleep while waiting (HALT, woken by the interrupt or a short
   timer), which leaves the launcher's CPU time to the device thread
   instead of spinning exits at it. A lost interrupt still fails. */
static int queue_irqs_arrived(struct virtqueue **q)
{
	for (int i = 0; i < 2; i++)
		if (q[i] && (!q[i]->irqs || (lguest_data.blocked_interrupts[0] & (1u << q[i]->irq))))
			return 0;
	return 1;
}

static void test_interrupts(void)
{
	struct virtqueue *q[2] = { vblk ? &vblk->vq[0] : NULL, vrng ? &vrng->vq[0] : NULL };
	if (!q[0] && !q[1])
		return;
	u64 start = now_ns(), deadline = start + 30000000000ull;
	u32 flags = irq_save();
	while (!queue_irqs_arrived(q) && now_ns() < deadline) {
		if (!tick_ns)
			clockevent_set(10000000);       /* the tick wakes us if it runs */
		hcall(LHCALL_HALT, 0, 0, 0, 0);         /* "sti; hlt" */
		irq_disable();
	}
	if (!tick_ns)
		clockevent_set(0);                      /* leave the clock as we found it */
	irq_restore(flags);
	int ok = queue_irqs_arrived(q);
	check("virtio_irqs", ok, "block irq %u: %u interrupts; rng irq %u: %u interrupts "
	      "(waited %u ms)", q[0] ? q[0]->irq : 0, q[0] ? q[0]->irqs : 0,
	      q[1] ? q[1]->irq : 0, q[1] ? q[1]->irqs : 0, (u32)div_u64(now_ns() - start, 1000000, NULL));
}

void devtest_run(void)
{
	test_console();
	test_block();
	test_rng();
	test_interrupts();
}

/* ==== Workloads for tests/robustness ============================================ */
/*
 *   records[=SEED]  numbered records on the disk, each written, FLUSHed and then
 *                   reported ("records: N flushed"), until the disk is full
 *   soak=SECONDS    the self-tests and a block write/flush/read-back, in a loop,
 *                   for that long
 *   net=SECONDS     frames out through the virtio network card (and any that
 *                   come in taken), for that long
 *
 * Each ends the run itself when something goes wrong (a crash whose message
 * says what), and returns when all went well.
 */

/* CRC-32 as zlib and Ethernet compute it (reflected, polynomial 0xEDB88320),
   one bit at a time: short, slow enough, and easy to check from Python. */
static u32 crc32(const u8 *p, u32 n)
{
	u32 c = 0xFFFFFFFFu;
	while (n--) {
		c ^= *p++;
		for (int k = 0; k < 8; k++)
			c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
	}
	return ~c;
}

static u32 xorshift32(u32 x)
{
	x ^= x << 13;
	x ^= x >> 17;
	x ^= x << 5;
	return x;
}

static void __attribute__((noreturn)) fail(const char *fmt, ...)
{
	static char msg[120];
	__builtin_va_list ap;
	__builtin_va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	__builtin_va_end(ap);
	kprintf("%s\n", msg);
	shutdown(msg, LGUEST_SHUTDOWN_POWEROFF);     /* any message but "Power down": a crash */
}

/*
 * A record is 1 to 8 sectors; record n has 1 + n % 8 of them and follows
 * record n - 1 on the disk, from sector 0:
 *
 *   0   "LGKREC01"
 *   8   u32 n
 *   12  u32 its length in sectors
 *   16  u32 the run's seed
 *   20  payload: 32-bit words of xorshift32, started from (n + 1) * 0x9E3779B9 ^ seed
 *   -4  u32 CRC-32 of everything before it
 *
 * tests/robustness/records.py reads them back.
 */
#define REC_MAX_SECTORS 8

static u32 record_fill(u8 *p, u32 n, u32 seed)
{
	u32 sectors = 1 + n % REC_MAX_SECTORS, len = sectors * SECTOR_SIZE;
	u32 x = (n + 1) * 0x9E3779B9u ^ seed;
	if (!x)
		x = 1;
	memcpy(p, "LGKREC01", 8);
	memcpy(p + 8, &n, 4);
	memcpy(p + 12, &sectors, 4);
	memcpy(p + 16, &seed, 4);
	for (u32 i = 20; i < len - 4; i += 4) {
		x = xorshift32(x);
		memcpy(p + i, &x, 4);
	}
	u32 crc = crc32(p, len - 4);
	memcpy(p + len - 4, &crc, 4);
	return sectors;
}

void records_run(u32 seed)
{
	static u8 rec[REC_MAX_SECTORS * SECTOR_SIZE] __attribute__((aligned(PAGE_SIZE)));
	if (!vblk)
		fail("records: no disk (give the Launcher --block FILE)");
	if (vblk_readonly)
		fail("records: the disk is read-only");
	kprintf("records: writing numbered records from sector 0, seed %u\n", seed);
	u64 sector = 0;
	for (u32 n = 0;; n++) {
		u32 sectors = record_fill(rec, n, seed);
		if (sector + sectors > vblk_capacity) {
			kprintf("records: the disk is full after %u records (%u sectors)\n",
				n, (u32)sector);
			return;
		}
		int sw = blk_rw(VIRTIO_BLK_T_OUT, sector, rec, sectors * SECTOR_SIZE);
		if (sw != VIRTIO_BLK_S_OK)
			fail("records: writing record %u got status %d (I/O error is 1)", n, sw);
		int sf = blk_flush();
		if (sf != VIRTIO_BLK_S_OK)
			fail("records: flushing record %u got status %d (I/O error is 1)", n, sf);
		kprintf("records: %u flushed\n", n);
		sector += sectors;
	}
}

/* ---- soak ------------------------------------------------------------------------ */
#define SOAK_SECTOR  2048                  /* 1 MiB in: clear of the self-test's record */
#define SOAK_CHUNK   (BLK_BUF_SIZE / SECTOR_SIZE)

/* One round of block I/O: 64 KiB written at a place that moves with the
   round, flushed, read back into a cleared buffer, compared. */
static void soak_block(u32 round)
{
	if (!vblk || vblk_readonly || vblk_capacity < SOAK_SECTOR + SOAK_CHUNK)
		return;
	u32 slots = (u32)((vblk_capacity - SOAK_SECTOR) / SOAK_CHUNK);
	if (slots > 64)
		slots = 64;
	u64 sector = SOAK_SECTOR + (u64)(round % slots) * SOAK_CHUNK;
	u8 *w = blk_bufs[2], *r = blk_bufs[3];
	u32 x = round * 0x9E3779B9u + 1;
	for (u32 i = 0; i < BLK_BUF_SIZE; i += 4) {
		x = xorshift32(x);
		memcpy(w + i, &x, 4);
	}
	int sw = blk_rw(VIRTIO_BLK_T_OUT, sector, w, BLK_BUF_SIZE);
	int sf = blk_flush();
	memset(r, 0, BLK_BUF_SIZE);
	int sr = blk_rw(VIRTIO_BLK_T_IN, sector, r, BLK_BUF_SIZE);
	int diff = first_difference(w, r, BLK_BUF_SIZE);
	if (sw || sf || sr || diff >= 0)
		fail("soak: round %u: block write %d, flush %d, read %d, difference at %d",
		     round, sw, sf, sr, diff);
}

void soak_run(u32 seconds)
{
	u64 start = now_ns(), end = start + (u64)seconds * 1000000000u;
	u32 round = 0;
	kprintf("soak: self-tests and block I/O in a loop for %u s\n", seconds);
	do {
		round++;
		int failures = selftest_run();
		if (failures)
			fail("soak: round %u: %d self-tests failed", round, failures);
		soak_block(round);
		kprintf("soak: round %u ok, %u s so far\n", round,
			(u32)div_u64(now_ns() - start, 1000000000u, NULL));
	} while (now_ns() < end);
	kprintf("soak: %u rounds passed\n", round);
}

/* ---- net: frames through the virtio network card ------------------------------- */
#define NET_HDR     10                     /* the legacy virtio_net_hdr, all zero */
#define NET_RX_BUFS 8
#define NET_TX_BUFS 16
#define NET_BUF     2048
#define NET_FRAME   60
static u8 net_rx[NET_RX_BUFS][NET_BUF] __attribute__((aligned(PAGE_SIZE)));
static u8 net_tx[NET_TX_BUFS][128] __attribute__((aligned(PAGE_SIZE)));
static u8 net_tx_busy[NET_TX_BUFS];

static void net_offer_rx(struct virtio_device *d, u8 *b)
{
	struct vbuf v[2] = { { __pa(b), NET_HDR }, { __pa(b + NET_HDR), NET_BUF - NET_HDR } };
	if (vq_add(&d->vq[0], v, 0, 2, b) < 0)
		fail("net: no room to offer a receive buffer");
}

/* Broadcast frames of an experimental EtherType (0x88B5): nobody acts on them. */
static void net_frame(u8 *b, u32 n)
{
	memset(b, 0, NET_HDR + NET_FRAME);
	u8 *f = b + NET_HDR;
	memset(f, 0xFF, 6);
	static const u8 src[6] = { 0x02, 0x6c, 0x67, 0x6b, 0x00, 0x01 };
	memcpy(f + 6, src, 6);
	f[12] = 0x88;
	f[13] = 0xB5;
	snprintf((char *)f + 14, NET_FRAME - 14, "lgk frame %u", n);
}

void net_run(u32 seconds)
{
	struct virtio_device *d = virtio_find(VIRTIO_ID_NET, 0);
	if (!d || d->nvq < 2 || virtio_start(d, "net", 0, 0))
		fail("net: no network card (give the Launcher --tunnet)");
	struct virtqueue *rx = &d->vq[0], *tx = &d->vq[1];
	for (u32 i = 0; i < NET_RX_BUFS; i++)
		net_offer_rx(d, net_rx[i]);
	vq_kick(rx);
	kprintf("net: up: sending frames for %u s\n", seconds);
	u64 start = now_ns(), end = start + (u64)seconds * 1000000000u, report = start;
	u32 sent = 0, done = 0, received = 0, inflight = 0;
	u8 *b;
	u32 len;
	for (;;) {
		int more = now_ns() < end;
		for (u32 i = 0; more && i < NET_TX_BUFS; i++) {
			if (net_tx_busy[i])
				continue;
			net_frame(net_tx[i], sent);
			struct vbuf v[2] = { { __pa(net_tx[i]), NET_HDR },
					     { __pa(net_tx[i] + NET_HDR), NET_FRAME } };
			if (vq_add(tx, v, 2, 0, net_tx[i]) < 0)
				break;
			net_tx_busy[i] = 1;
			inflight++;
			sent++;
		}
		if (!inflight)
			break;
		vq_kick(tx);
		/* A device that takes no frame in 30 s is stuck: that is the hang
		   the tests look for. */
		if (!(b = vq_wait(tx, NULL)))
			fail("net: the device took no frame for 30 s (%u sent, %u done)", sent, done);
		do {
			net_tx_busy[(u32)(b - net_tx[0]) / sizeof(net_tx[0])] = 0;
			inflight--;
			done++;
		} while ((b = vq_get_used(tx, NULL)));
		int offered = 0;
		while ((b = vq_get_used(rx, &len))) {
			received++;
			net_offer_rx(d, b);
			offered = 1;
		}
		if (offered)
			vq_kick(rx);
		if (now_ns() >= report) {
			kprintf("net: %u frames sent, %u received\n", done, received);
			report += 1000000000u;
		}
	}
	kprintf("net: done: %u frames sent, %u received\n", done, received);
}
