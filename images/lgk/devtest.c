/*
 * devtest.c - self-tests of the devices on the lguest bus. Each runs only
 * when the Launcher gave us that device (`--block FILE`, `--rng`; the console
 * is always there), so a run without devices has fewer checks, not failures.
 *
 * The block tests keep a record on the disk, so that a second boot can see
 * what the first one wrote: sectors 0-127 (64 KiB) hold, per sector, the text
 * "lgk-disk sector SSSSS boot BBBBB\n" and then bytes (i*31 + S*7 + B) & 0xFF
 * for offsets i = 33..511, where B counts the boots that wrote the disk.
 * (tests/test_own_guest_devices_kvm.py computes the same bytes.)
 * Nothing else on the disk is touched, except by the benchmark (from 1 MiB).
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

	/* Past the end: an I/O error, and nothing written. */
	int s1 = blk_rw(VIRTIO_BLK_T_IN, cap, r, SECTOR_SIZE);
	int s2 = vblk_readonly ? VIRTIO_BLK_S_IOERR
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

/* The block and rng queues finished by interrupt, not by luck. */
static void test_interrupts(void)
{
	struct virtqueue *q[2] = { vblk ? &vblk->vq[0] : NULL, vrng ? &vrng->vq[0] : NULL };
	if (!q[0] && !q[1])
		return;
	int ok = 1;
	for (int i = 0; i < 2; i++)
		if (q[i])
			ok &= q[i]->irqs > 0 && !(lguest_data.blocked_interrupts[0] & (1u << q[i]->irq));
	check("virtio_irqs", ok, "block irq %u: %u interrupts; rng irq %u: %u interrupts",
	      q[0] ? q[0]->irq : 0, q[0] ? q[0]->irqs : 0, q[1] ? q[1]->irq : 0,
	      q[1] ? q[1]->irqs : 0);
}

void devtest_run(void)
{
	test_console();
	test_block();
	test_rng();
	test_interrupts();
}
