/*
 * vconsole.c - the virtio console (type 3): queue 0 brings input, queue 1
 * takes output (docs/abi.md §9.6).
 *
 * Output. Once the device is up, console_write() lands here instead of in the
 * early console. Each write is copied into one of a ring of small buffers and
 * offered on queue 1, with a kick; we do not wait for the device. Buffers come
 * back in order, and we take them back as we go (no interrupt needed: queue 1
 * is polled). Before the run ends, vconsole_flush() waits until the device
 * has taken everything, so no line is lost when the Host powers us off.
 *
 * Input. Only offered when someone asks for a line (the `echo` mode): one
 * buffer at a time, each filled by one read of the Launcher's stdin. A buffer
 * that comes back empty means end of input.
 */
#include "virtio.h"

struct virtio_device *vcon;
u32 vconsole_bufs_sent;

#define OUT_BUFS 32
#define OUT_SIZE 256
static char out_buf[OUT_BUFS][OUT_SIZE];
static u8 out_busy[OUT_BUFS];
static u32 out_next, out_inflight;

static struct virtqueue *out_q(void) { return &vcon->vq[1]; }
static struct virtqueue *in_q(void) { return &vcon->vq[0]; }

static void release(char *b)
{
	out_busy[(u32)(b - out_buf[0]) / OUT_SIZE] = 0;
	out_inflight--;
}

static void reclaim(void)
{
	char *b;
	while ((b = vq_get_used(out_q(), NULL)))
		release(b);
}

void vconsole_init(void)
{
	struct virtio_device *d = virtio_find(VIRTIO_ID_CONSOLE, 0);
	if (!d) {
		kprintf("virtio: no console: output stays on the early console\n");
		return;
	}
	if (d->nvq < 2 || virtio_start(d, "console", 0, 1u << 1))
		return;
	kprintf("virtio: console up: from here on output goes through queue 1\n");
	vcon = d;
	console_virtio = 1;
}

void vconsole_write(const char *s, size_t len)
{
	u32 flags = irq_save();            /* one writer at a time */
	reclaim();
	while (len) {
		size_t n = len < OUT_SIZE ? len : OUT_SIZE;
		char *b = out_buf[out_next];
		if (out_busy[out_next]) {      /* all buffers in flight: wait for the oldest */
			char *done = vq_wait(out_q(), NULL);
			if (!done)
				break;         /* the device stopped taking output: drop it */
			release(done);
			continue;
		}
		memcpy(b, s, n);
		struct vbuf v = { __pa(b), (u32)n };
		if (vq_add(out_q(), &v, 1, 0, b) < 0)
			break;
		out_busy[out_next] = 1;
		out_inflight++;
		out_next = (out_next + 1) % OUT_BUFS;
		vconsole_bufs_sent++;
		vq_kick(out_q());
		s += n;
		len -= n;
	}
	irq_restore(flags);
}

/* 0 once every buffer came back, -1 if the device stopped answering. */
int vconsole_flush(void)
{
	if (!vcon)
		return 0;
	reclaim();
	while (out_inflight) {
		char *b = vq_wait(out_q(), NULL);
		if (!b)
			return -1;
		release(b);
	}
	return 0;
}

/* ---- input ------------------------------------------------------------------------ */
static char in_buf[128];
static char in_left[128];              /* what came after the last line's newline */
static u32 in_left_len, in_left_pos;

/* One line, without its newline, into line[]; its length, or -1 at the end
   of input. Waits as long as it takes. */
int vconsole_read_line(char *line, size_t size)
{
	size_t n = 0;
	if (!vcon)
		return -1;
	for (;;) {
		while (in_left_pos < in_left_len) {
			char c = in_left[in_left_pos++];
			if (c == '\n' || c == '\r') {
				line[n] = 0;
				return (int)n;
			}
			if (n < size - 1)
				line[n++] = c;
		}
		struct vbuf v = { __pa(in_buf), sizeof(in_buf) };
		if (vq_add(in_q(), &v, 0, 1, in_buf) < 0)
			return -1;
		vq_kick(in_q());
		u32 got = 0;
		while (!vq_wait(in_q(), &got))
			;                      /* nobody typed yet: keep waiting */
		if (got == 0) {                /* end of input */
			line[n] = 0;
			return n ? (int)n : -1;
		}
		if (got > sizeof(in_buf))
			got = sizeof(in_buf);
		memcpy(in_left, in_buf, got);
		in_left_len = got;
		in_left_pos = 0;
	}
}
