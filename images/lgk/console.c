/*
 * console.c - where kernel output goes.
 *
 * Every byte of output passes through console_write(). Until the virtio
 * console is up (vconsole.c) that is the early console: NOTIFY with the
 * physical address of a NUL-terminated string of at most 16 characters
 * (docs/abi.md §9.3). The Host hands any NOTIFY value that is not a device
 * to the Launcher, which prints the string. After that, output goes through
 * the console's queue 1; panic() switches back, because the early console
 * cannot go wrong.
 */
#include "virtio.h"

#define EARLY_CHUNK 16

int console_virtio;

static void early_write(const char *s, size_t len)
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

void console_write(const char *s, size_t len)
{
	if (console_virtio)
		vconsole_write(s, len);
	else
		early_write(s, len);
}

/* A benchmark marker ("@b:name" / "@e:name", at most 16 bytes with the
   newline) always goes through the early console: a NOTIFY is handled on
   the Host's exit path, so the Launcher sees it at an exact exit count and
   can say how many exits the work between two markers took. */
void console_mark(const char *mark)
{
	early_write(mark, strlen(mark));
}

/* Everything written so far has reached the Launcher. */
void console_flush(void)
{
	if (console_virtio)
		vconsole_flush();
}

void kprintf(const char *fmt, ...)
{
	char buf[256];
	__builtin_va_list ap;
	__builtin_va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf), fmt, ap);
	__builtin_va_end(ap);
	if (n > (int)sizeof(buf) - 1)
		n = sizeof(buf) - 1;
	console_write(buf, (size_t)n);
}
