/*
 * virtio.h - the lguest bus and legacy virtqueues, as lgk's drivers see them
 * (docs/abi.md §9), and the drivers' entry points.
 *
 * The Launcher puts one page of device descriptors at guest-physical `mem`
 * (the first page after the RAM e820 reports) and each virtqueue's ring in
 * three pages after it. Both are ordinary memory: we map them, read the
 * descriptors, and share the rings with the device threads on the host side.
 * We speak to a device only through NOTIFY: the ring's address kicks a queue,
 * the descriptor's address says its status changed. It speaks to us with one
 * interrupt per queue.
 */
#ifndef VIRTIO_H
#define VIRTIO_H

#include "lgk.h"

/* ---- the descriptor page (§9.1) ------------------------------------------------ */
struct lguest_device_desc {
	u8 type;                /* virtio device ID; 0 ends the list */
	u8 num_vq;
	u8 feature_len;         /* bytes in each feature bitmap */
	u8 config_len;
	u8 status;              /* the virtio status byte: ours to write */
	/* then num_vq x lguest_vqconfig, the offered and the accepted feature
	   bitmaps (feature_len bytes each), and config_len bytes of config */
} __attribute__((packed));

struct lguest_vqconfig {
	u16 num;                /* ring entries */
	u16 irq;                /* this queue's interrupt */
	u32 pfn;                /* the ring's guest-physical page */
} __attribute__((packed));

#define VIRTIO_ID_NET       1
#define VIRTIO_ID_BLOCK     2
#define VIRTIO_ID_CONSOLE   3
#define VIRTIO_ID_RNG       4

#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER      2
#define VIRTIO_STATUS_DRIVER_OK   4
#define VIRTIO_STATUS_FAILED      0x80

/* ---- the legacy split ring (§9.2) ---------------------------------------------- */
struct vring_desc {
	u64 addr;               /* guest-physical */
	u32 len;
	u16 flags;
	u16 next;
};
#define VRING_DESC_F_NEXT     1
#define VRING_DESC_F_WRITE    2     /* the device writes this buffer */
#define VRING_DESC_F_INDIRECT 4

struct vring_avail {            /* ours: what we offer */
	u16 flags;
	u16 idx;
	u16 ring[];
};
#define VRING_AVAIL_F_NO_INTERRUPT 1

struct vring_used_elem {
	u32 id;                 /* the head of the chain */
	u32 len;                /* bytes the device wrote */
};
struct vring_used {             /* the device's: what it is done with */
	u16 flags;
	u16 idx;
	struct vring_used_elem ring[];
};
#define VRING_USED_F_NO_NOTIFY 1

#define LGUEST_VRING_ALIGN 4096
#define VQ_MAX_NUM         256

/* ---- virtio.c: the bus and the queues ------------------------------------------- */
struct virtio_device;

struct virtqueue {
	struct virtio_device *dev;
	u32 index, num, irq;
	u32 ring_pa;                      /* also the NOTIFY value that kicks it */
	struct vring_desc *desc;
	volatile struct vring_avail *avail;
	volatile struct vring_used *used;
	u16 free_head, num_free;          /* unused descriptors, chained by .next */
	u16 avail_idx;                    /* our copy of avail->idx */
	u16 last_used;                    /* the next used entry we will read */
	int poll;                         /* no interrupts unless a waiter asks */
	void *token[VQ_MAX_NUM];          /* per chain head: the caller's cookie */
	volatile u32 irqs;                /* interrupts taken */
	u32 kicks, kicks_suppressed;      /* NOTIFYs made, and skipped (NO_NOTIFY) */
};

struct virtio_device {
	const char *name;
	struct lguest_device_desc *desc;  /* in the descriptor page */
	u32 desc_pa;                      /* the NOTIFY value for status changes */
	struct lguest_vqconfig *vqcfg;
	u8 *offered, *accepted, *config;
	u32 nvq;
	struct virtqueue vq[2];
};

/* One buffer of a request: guest-physical address and length. */
struct vbuf {
	u32 pa, len;
};

extern u32 virtio_bus_pa;                  /* `mem`: where the descriptor page is */
extern u32 virtio_bus_limit;               /* end of the bus's pages (pfn_limit) */
extern struct lguest_device_desc *virtio_bus_page;

void virtio_init(void);                   /* probe the bus, start the drivers */
struct virtio_device *virtio_find(u8 type, int nth);
int virtio_has_feature(struct virtio_device *d, u32 bit);
int virtio_start(struct virtio_device *d, const char *name, u32 wanted_features,
		 u32 poll_mask);

int vq_add(struct virtqueue *vq, const struct vbuf *bufs, int nout, int nin, void *token);
void vq_kick(struct virtqueue *vq);
void *vq_get_used(struct virtqueue *vq, u32 *len);
int vq_has_used(struct virtqueue *vq);
void *vq_wait(struct virtqueue *vq, u32 *len);
void vq_mb(void);

/* ---- vconsole.c ---------------------------------------------------------------------- */
extern struct virtio_device *vcon;
void vconsole_init(void);
void vconsole_write(const char *s, size_t len);
int vconsole_flush(void);                 /* wait until the device took every byte */
int vconsole_read_line(char *buf, size_t size);   /* -1 at end of input */
extern u32 vconsole_bufs_sent;

/* ---- vblock.c ------------------------------------------------------------------------- */
#define SECTOR_SIZE 512
#define VIRTIO_BLK_T_IN       0
#define VIRTIO_BLK_T_OUT      1
#define VIRTIO_BLK_T_SCSI_CMD 2
#define VIRTIO_BLK_T_FLUSH    4
#define VIRTIO_BLK_T_GET_ID   8
#define VIRTIO_BLK_S_OK       0
#define VIRTIO_BLK_S_IOERR    1
#define VIRTIO_BLK_S_UNSUPP   2
#define VIRTIO_BLK_F_SEG_MAX  2
#define VIRTIO_BLK_F_RO       5
#define VIRTIO_BLK_F_FLUSH    9
#define VIRTIO_BLK_ID_BYTES   20

struct blk_req {                          /* one request in flight */
	struct {                          /* what the device reads first */
		u32 type, ioprio;
		u64 sector;
	} hdr;
	u8 status;                        /* what the device writes last */
	volatile int done;
	u32 used_len;
};

#define BLK_BUFS     4                    /* shared by the self-tests and the benchmark */
#define BLK_BUF_SIZE 65536
extern u8 blk_bufs[BLK_BUFS][BLK_BUF_SIZE];

extern struct virtio_device *vblk;
extern u64 vblk_capacity;                 /* sectors */
extern u32 vblk_seg_max;
extern int vblk_readonly;
void vblock_init(void);
int blk_submit(struct blk_req *rq, u32 type, u64 sector, const struct vbuf *data, int ndata);
struct blk_req *blk_complete(void);       /* wait for any request to finish */
int blk_rw(u32 type, u64 sector, void *buf, u32 len);     /* one request, waited for */
int blk_flush(void);
int blk_may_write(void);                  /* the guest word `diskwrite` was given */

/* ---- vrng.c --------------------------------------------------------------------------- */
extern struct virtio_device *vrng;
void vrng_init(void);
int rng_read(void *buf, u32 len);         /* bytes the device gave, or -1 */

#endif
