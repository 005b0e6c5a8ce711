/*
 * console.c - where kernel output goes.
 *
 * For now, the early console: NOTIFY with the physical address of a
 * NUL-terminated string of at most 16 characters (lguest-abi.md §9.3). The
 * Host hands any NOTIFY value that is not a device to the Launcher, which
 * prints the string. Every byte of output passes through console_write(),
 * so the virtio console can later replace just that function.
 */
#include "lgk.h"

#define EARLY_CHUNK 16

void console_write(const char *s, size_t len)
{
	static char chunk[EARLY_CHUNK + 1];
	u32 flags = irq_save();               /* one writer at a time */
	while (len) {
		size_t n = len < EARLY_CHUNK ? len : EARLY_CHUNK;
		memcpy(chunk, s, n);
		chunk[n] = 0;
		hcall(LHCALL_NOTIFY, __pa(chunk), 0, 0, 0);
		s += n;
		len -= n;
	}
	irq_restore(flags);
}

void kprintf(const char *fmt, ...)
{
	char buf[160];
	__builtin_va_list ap;
	__builtin_va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	__builtin_va_end(ap);
	if (n > (int)sizeof(buf) - 1)
		n = sizeof(buf) - 1;
	console_write(buf, (size_t)n);
}
