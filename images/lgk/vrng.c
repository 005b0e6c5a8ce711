/*
 * vrng.c - the virtio entropy device (type 4): we offer a buffer, the device
 * fills it with random bytes from the host.
 */
#include "virtio.h"

struct virtio_device *vrng;

void vrng_init(void)
{
	struct virtio_device *d = virtio_find(VIRTIO_ID_RNG, 0);
	if (!d || d->nvq < 1 || virtio_start(d, "rng", 0, 0))
		return;
	vrng = d;
	kprintf("virtio: rng up\n");
}

/* Fill buf (kernel memory, at most a page) with len random bytes: how many
   the device gave, or -1. */
int rng_read(void *buf, u32 len)
{
	static char token;
	u32 got = 0;
	if (!vrng || !len || len > PAGE_SIZE - ((u32)buf & (PAGE_SIZE - 1)))
		return -1;
	struct vbuf v = { __pa(buf), len };
	if (vq_add(&vrng->vq[0], &v, 0, 1, &token) < 0)
		return -1;
	vq_kick(&vrng->vq[0]);
	if (!vq_wait(&vrng->vq[0], &got))
		return -1;
	return (int)got;
}
