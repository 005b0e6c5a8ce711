/*
 * virtio.c - the lguest bus and the virtqueues on it (docs/abi.md §9).
 *
 * Finding devices. The descriptor page sits at guest-physical `mem`, the end
 * of the RAM e820 entry 0 reports; mm.c keeps a window of kernel addresses
 * for it and the rings after it. Descriptors follow each other from offset 0
 * until one has type 0: {type, num_vq, feature_len, config_len, status}, then
 * the queues' {num, irq, pfn}, the offered features, the accepted features,
 * and the config space.
 *
 * Starting a driver (G2, what Linux 3.x does):
 *   1. accept features: offered & wanted, never anything unoffered;
 *   2. set up each queue in the pages its pfn names, take its IRQ;
 *   3. status = ACKNOWLEDGE | DRIVER, then NOTIFY(the descriptor's address):
 *      "features finalized", and the Launcher starts the device;
 *   4. status |= DRIVER_OK, which the Launcher does not need to hear.
 *
 * A queue (the legacy split ring): we fill descriptors and put chain heads
 * in the avail ring, the device puts them back in the used ring. NOTIFY(the
 * ring's address) kicks the device unless it said it is busy anyway
 * (used->flags NO_NOTIFY); it interrupts us unless we said we would rather
 * poll (avail->flags NO_INTERRUPT).
 */
#include "virtio.h"

u32 virtio_bus_pa, virtio_bus_limit;
struct lguest_device_desc *virtio_bus_page;

#define MAX_DEVICES 16
static struct virtio_device devices[MAX_DEVICES];
static u32 ndevices;
static struct virtqueue *vq_by_irq[LGUEST_IRQS];

/* A full barrier: our avail->idx store must be visible before we read the
   device's used->flags, or we might skip a kick the device needs. x86 may
   let a load pass an earlier store; a locked instruction stops that. */
void vq_mb(void)
{
	__asm__ __volatile__("lock; addl $0, (%%esp)" : : : "memory", "cc");
}

static const char *type_name(u8 type)
{
	switch (type) {
	case VIRTIO_ID_NET: return "net";
	case VIRTIO_ID_BLOCK: return "block";
	case VIRTIO_ID_CONSOLE: return "console";
	case VIRTIO_ID_RNG: return "rng";
	}
	return "unknown";
}

static u32 feature_word(const u8 *bits, u32 len)
{
	u32 w = 0;
	for (u32 i = 0; i < len && i < 4; i++)
		w |= (u32)bits[i] << (8 * i);
	return w;
}

/* ---- the bus ------------------------------------------------------------------ */
void virtio_init(void)
{
	if (mem_guessed) {
		kprintf("virtio: no e820 map, so no lguest bus\n");
		return;
	}
	virtio_bus_pa = dev_window_pa;
	u8 *page = map_device_pages(virtio_bus_pa, 1);
	if (!page)
		return;
	virtio_bus_page = (struct lguest_device_desc *)page;
	virtio_bus_limit = virtio_bus_pa + PAGE_SIZE;

	u32 off = 0;
	while (off + sizeof(struct lguest_device_desc) <= PAGE_SIZE) {
		struct lguest_device_desc *d = (void *)(page + off);
		if (!d->type)
			break;
		u32 size = sizeof(*d) + d->num_vq * sizeof(struct lguest_vqconfig) +
			   2u * d->feature_len + d->config_len;
		if (off + size > PAGE_SIZE) {
			kprintf("virtio: the descriptor at offset %u runs off the page\n", off);
			break;
		}
		if (ndevices < MAX_DEVICES) {
			struct virtio_device *v = &devices[ndevices++];
			v->name = type_name(d->type);
			v->desc = d;
			v->desc_pa = virtio_bus_pa + off;
			v->nvq = d->num_vq;
			v->vqcfg = (struct lguest_vqconfig *)(d + 1);
			v->offered = (u8 *)(v->vqcfg + d->num_vq);
			v->accepted = v->offered + d->feature_len;
			v->config = v->accepted + d->feature_len;
			virtio_bus_limit += 3 * PAGE_SIZE * d->num_vq;
			kprintf("virtio: %s (type %u) at %x: %u queue%s, features %x\n",
				v->name, d->type, v->desc_pa, d->num_vq, d->num_vq == 1 ? "" : "s",
				feature_word(v->offered, d->feature_len));
		}
		off += size;
	}
}

/* The nth device of a type, in the order the Launcher listed them. */
struct virtio_device *virtio_find(u8 type, int nth)
{
	for (u32 i = 0; i < ndevices; i++)
		if (devices[i].desc->type == type && nth-- == 0)
			return &devices[i];
	return NULL;
}

int virtio_has_feature(struct virtio_device *d, u32 bit)
{
	return bit / 8 < d->desc->feature_len && (d->accepted[bit / 8] & (1u << (bit % 8)));
}

/* ---- interrupts ------------------------------------------------------------------ */
/* Whoever waits on a queue looks at its used ring when HALT returns; the
   handler only has to count. */
static void virtio_irq(struct regs *r)
{
	struct virtqueue *vq = vq_by_irq[r->vector - FIRST_EXTERNAL_VECTOR];
	if (vq)
		vq->irqs++;
}

/* ---- setting a queue up ------------------------------------------------------------ */
static int vq_setup(struct virtio_device *d, u32 index, int poll)
{
	struct virtqueue *vq = &d->vq[index];
	struct lguest_vqconfig c;
	memcpy(&c, &d->vqcfg[index], sizeof(c));      /* packed: copy it out */
	if (!c.num || (c.num & (c.num - 1)) || c.num > VQ_MAX_NUM) {
		kprintf("virtio: %s queue %u: %u entries is not a power of two up to %u\n",
			d->name, index, c.num, VQ_MAX_NUM);
		return -1;
	}
	if (!c.irq || c.irq >= LGUEST_IRQS || vq_by_irq[c.irq]) {
		kprintf("virtio: %s queue %u: unusable IRQ %u\n", d->name, index, c.irq);
		return -1;
	}
	/* desc[num], avail {flags, idx, ring[num], used_event}, then at the next
	   4 KiB boundary used {flags, idx, ring[num], avail_event}. */
	u32 used_off = ALIGN_UP(16 * c.num + 6 + 2 * c.num, LGUEST_VRING_ALIGN);
	u32 bytes = used_off + 6 + 8 * c.num;
	u8 *ring = map_device_pages(c.pfn << 12, ALIGN_UP(bytes, PAGE_SIZE) / PAGE_SIZE);
	if (!ring) {
		kprintf("virtio: %s queue %u: ring at pfn %x is outside the bus's pages\n",
			d->name, index, c.pfn);
		return -1;
	}
	memset(vq, 0, sizeof(*vq));
	vq->dev = d;
	vq->index = index;
	vq->num = c.num;
	vq->irq = c.irq;
	vq->ring_pa = c.pfn << 12;
	vq->desc = (struct vring_desc *)ring;
	vq->avail = (struct vring_avail *)(ring + 16 * c.num);
	vq->used = (struct vring_used *)(ring + used_off);
	for (u32 i = 0; i < c.num; i++)
		vq->desc[i].next = (u16)(i + 1);          /* the free list */
	vq->num_free = (u16)c.num;
	vq->poll = poll;
	vq->avail->flags = poll ? VRING_AVAIL_F_NO_INTERRUPT : 0;
	vq->avail->idx = 0;
	vq->last_used = vq->used->idx;                /* 0 on a fresh ring */

	vq_by_irq[c.irq] = vq;
	irq_set_handler(c.irq, virtio_irq);
	lguest_data.blocked_interrupts[0] &= ~(1u << c.irq);   /* now we can take it */
	return 0;
}

/*
 * Bring a device up: features, queues, status. Queues in poll_mask get no
 * interrupts except while someone waits on them (vq_wait).
 */
int virtio_start(struct virtio_device *d, const char *name, u32 wanted, u32 poll_mask)
{
	d->name = name;
	if (d->nvq > ARRAY_SIZE(d->vq)) {
		kprintf("virtio: %s has %u queues, more than we drive\n", name, d->nvq);
		goto failed;
	}
	for (u32 i = 0; i < d->desc->feature_len; i++)
		d->accepted[i] = d->offered[i] & (i < 4 ? (u8)(wanted >> (8 * i)) : 0);
	for (u32 i = 0; i < d->nvq; i++)
		if (vq_setup(d, i, (poll_mask >> i) & 1))
			goto failed;
	d->desc->status = VIRTIO_STATUS_ACKNOWLEDGE;
	d->desc->status = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER;
	barrier();
	hcall(LHCALL_NOTIFY, d->desc_pa, 0, 0, 0);   /* features final: start it */
	d->desc->status |= VIRTIO_STATUS_DRIVER_OK;
	return 0;
failed:
	d->desc->status = VIRTIO_STATUS_FAILED;
	barrier();
	hcall(LHCALL_NOTIFY, d->desc_pa, 0, 0, 0);
	return -1;
}

/* ---- using a queue --------------------------------------------------------------------- */

/* Offer one chain: nout buffers the device reads, then nin it writes.
   The head index, or -1 if the ring has no room. */
int vq_add(struct virtqueue *vq, const struct vbuf *bufs, int nout, int nin, void *token)
{
	int n = nout + nin;
	if (n <= 0 || !token)
		return -1;
	u32 flags = irq_save();
	if (vq->num_free < n) {
		irq_restore(flags);
		return -1;
	}
	u16 head = vq->free_head, i = head;
	for (int k = 0; k < n; k++) {
		struct vring_desc *d = &vq->desc[i];
		d->addr = bufs[k].pa;
		d->len = bufs[k].len;
		d->flags = (k >= nout ? VRING_DESC_F_WRITE : 0) | (k + 1 < n ? VRING_DESC_F_NEXT : 0);
		i = d->next;          /* the next free one, which the chain goes on to */
	}
	vq->free_head = i;
	vq->num_free = (u16)(vq->num_free - n);
	vq->token[head] = token;
	vq->avail->ring[vq->avail_idx % vq->num] = head;
	barrier();                    /* the entry before the index (x86 keeps stores in order) */
	vq->avail->idx = ++vq->avail_idx;
	irq_restore(flags);
	return head;
}

void vq_kick(struct virtqueue *vq)
{
	vq_mb();
	if (vq->used->flags & VRING_USED_F_NO_NOTIFY) {
		vq->kicks_suppressed++;    /* the device is busy and will look again */
		return;
	}
	vq->kicks++;
	hcall(LHCALL_NOTIFY, vq->ring_pa, 0, 0, 0);
}

int vq_has_used(struct virtqueue *vq)
{
	return vq->last_used != vq->used->idx;
}

/* The next chain the device is done with: its token, and in *len how many
   bytes it wrote. NULL if there is none yet. */
void *vq_get_used(struct virtqueue *vq, u32 *len)
{
	u32 flags = irq_save();
	void *token = NULL;
	if (vq->last_used != vq->used->idx) {
		barrier();            /* the index before the entry */
		volatile struct vring_used_elem *e = &vq->used->ring[vq->last_used % vq->num];
		u32 id = e->id, written = e->len;
		if (id >= vq->num || !vq->token[id])
			panic("virtio: %s queue %u: the device gave back %u, which we never offered",
			      vq->dev->name, vq->index, id);
		token = vq->token[id];
		vq->token[id] = NULL;
		u32 i = id, n = 1;
		while (vq->desc[i].flags & VRING_DESC_F_NEXT) {
			i = vq->desc[i].next;
			n++;
		}
		vq->desc[i].next = vq->free_head;     /* the chain goes back on the free list */
		vq->free_head = (u16)id;
		vq->num_free = (u16)(vq->num_free + n);
		vq->last_used++;
		if (len)
			*len = written;
	}
	irq_restore(flags);
	return token;
}

/*
 * Wait for the next used chain. With interrupts on we sleep in HALT and the
 * queue's interrupt (or the tick) wakes us; with them off (inside a console
 * write, say) we poll with null hypercalls. A device that never answers
 * gets 30 seconds (5 when polling): then NULL.
 * A polled queue asks for interrupts only while someone sleeps on it.
 */
void *vq_wait(struct virtqueue *vq, u32 *len)
{
	u32 flags = irq_save();
	int sleep = flags & X86_EFLAGS_IF;
	void *token;
	u64 deadline = now_ns() + (sleep ? 30000000000ull : 5000000000ull);
	if (vq->poll && sleep) {
		vq->avail->flags &= (u16)~VRING_AVAIL_F_NO_INTERRUPT;
		vq_mb();              /* then look again: no interrupt is lost */
	}
	while (!(token = vq_get_used(vq, len))) {
		if (now_ns() > deadline)
			break;
		if (sleep) {
			hcall(LHCALL_HALT, 0, 0, 0, 0);
			irq_disable();
		} else {
			hcall(LHCALL_FLUSH_ASYNC, 0, 0, 0, 0);
		}
	}
	if (vq->poll)
		vq->avail->flags |= VRING_AVAIL_F_NO_INTERRUPT;
	irq_restore(flags);
	return token;
}
