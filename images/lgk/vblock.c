/*
 * vblock.c - the virtio block device (type 2), one request queue.
 *
 * A request is a chain: a 16-byte header the device reads {type, ioprio,
 * sector}, the data (read by the device for OUT, written by it for IN and
 * GET_ID), and one status byte it writes last: OK, IOERR or UNSUPP. Sectors
 * are 512 bytes. We accept FLUSH (9: the device honours T_FLUSH), SEG_MAX
 * (2: config says how many data buffers one request may have) and RO (5)
 * if it is offered, and nothing else.
 *
 * Requests may be in flight together; each carries its struct blk_req as
 * the token, and blk_complete() hands back whichever the device finished.
 */
#include "virtio.h"

struct virtio_device *vblk;
u8 blk_bufs[BLK_BUFS][BLK_BUF_SIZE] __attribute__((aligned(4096)));
u64 vblk_capacity;
u32 vblk_seg_max = 1;
int vblk_readonly;

#define MAX_SEGS 64

void vblock_init(void)
{
	struct virtio_device *d = virtio_find(VIRTIO_ID_BLOCK, 0);
	if (!d || d->nvq < 1)
		return;
	u32 wanted = (1u << VIRTIO_BLK_F_FLUSH) | (1u << VIRTIO_BLK_F_SEG_MAX) |
		     (1u << VIRTIO_BLK_F_RO);
	if (virtio_start(d, "block", wanted, 0))
		return;
	/* config: u64 capacity, u32 size_max, u32 seg_max (packed, so copy) */
	if (d->desc->config_len >= 8)
		memcpy(&vblk_capacity, d->config, 8);
	if (virtio_has_feature(d, VIRTIO_BLK_F_SEG_MAX) && d->desc->config_len >= 16)
		memcpy(&vblk_seg_max, d->config + 12, 4);
	if (vblk_seg_max < 1)
		vblk_seg_max = 1;
	vblk_readonly = virtio_has_feature(d, VIRTIO_BLK_F_RO);
	vblk = d;
	kprintf("virtio: block up: %u sectors (%u KiB), seg_max %u%s%s\n",
		(u32)vblk_capacity, (u32)(vblk_capacity / 2), vblk_seg_max,
		virtio_has_feature(d, VIRTIO_BLK_F_FLUSH) ? ", flush" : "",
		vblk_readonly ? ", read-only" : "");
}

/* Offer one request: data[] are its data buffers. 0, or -1 if it cannot go. */
int blk_submit(struct blk_req *rq, u32 type, u64 sector, const struct vbuf *data, int ndata)
{
	struct vbuf bufs[MAX_SEGS + 2];
	if (!vblk || ndata < 0 || ndata > MAX_SEGS || (u32)ndata > vblk_seg_max)
		return -1;
	int writes = type == VIRTIO_BLK_T_OUT;
	rq->hdr.type = type;
	rq->hdr.ioprio = 0;
	rq->hdr.sector = sector;
	rq->status = 0xFF;            /* the device must overwrite it */
	rq->done = 0;
	rq->used_len = 0;
	bufs[0] = (struct vbuf){ __pa(&rq->hdr), sizeof(rq->hdr) };
	for (int i = 0; i < ndata; i++)
		bufs[1 + i] = data[i];
	bufs[1 + ndata] = (struct vbuf){ __pa(&rq->status), 1 };
	int nout = writes ? 1 + ndata : 1;
	if (vq_add(&vblk->vq[0], bufs, nout, 2 + ndata - nout, rq) < 0)
		return -1;
	vq_kick(&vblk->vq[0]);
	return 0;
}

/* Wait until the device finishes some request; that request (NULL if it
   never answers). */
struct blk_req *blk_complete(void)
{
	u32 len = 0;
	struct blk_req *rq = vq_wait(&vblk->vq[0], &len);
	if (rq) {
		rq->used_len = len;
		rq->done = 1;
	}
	return rq;
}

/* Cut [buf, buf + len) of kernel memory into one buffer per page, the way
   a driver with a scatter-gather list sees memory. The number of buffers. */
static int to_pages(void *buf, u32 len, struct vbuf *v, int max)
{
	u32 va = (u32)buf;
	int n = 0;
	while (len) {
		u32 chunk = PAGE_SIZE - (va & (PAGE_SIZE - 1));
		if (chunk > len)
			chunk = len;
		if (n == max)
			return -1;
		v[n++] = (struct vbuf){ __pa(va), chunk };
		va += chunk;
		len -= chunk;
	}
	return n;
}

/* One request, waited for: its status byte, or -1 if it could not be made. */
int blk_rw(u32 type, u64 sector, void *buf, u32 len)
{
	static struct blk_req rq;
	struct vbuf v[MAX_SEGS];
	int n = len ? to_pages(buf, len, v, MAX_SEGS) : 0;
	if (n < 0 || blk_submit(&rq, type, sector, v, n))
		return -1;
	while (!rq.done)
		if (!blk_complete())
			return -1;
	return rq.status;
}

int blk_flush(void)
{
	return blk_rw(VIRTIO_BLK_T_FLUSH, 0, NULL, 0);
}

/* A disk given to the bundled guest may be a user's real image: the
   self-test and the benchmark write to it only when asked to. */
int blk_may_write(void)
{
	return cmdline_has("diskwrite");
}
