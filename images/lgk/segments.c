/*
 * segments.c - the GDT, through the Host.
 *
 * The real GDT belongs to the Host and is read-only to us. We hand it one
 * descriptor at a time (LOAD_GDT_ENTRY) and three thread-local ones at a
 * time (LOAD_TLS, entries 6-8). The Host fixes every descriptor up as it
 * stores it: DPL 0 becomes DPL 1 (we run at ring 1) and the accessed bit is
 * set (docs/abi.md §2.2). So, like Linux, we describe our kernel segments
 * as ring 0 and let the Host adjust them.
 */
#include "lgk.h"

#define SEG_CODE  0xA      /* execute/read */
#define SEG_DATA  0x2      /* read/write */

/* A 32-bit code or data descriptor: base, limit in 4 KiB units, type, DPL. */
u64 make_segment(u32 base, u32 limit_pages, u32 type, u32 dpl)
{
	u32 low = (base << 16) | (limit_pages & 0xFFFF);
	u32 high = (base & 0xFF000000) | ((base >> 16) & 0xFF)
		| (limit_pages & 0xF0000)
		| (1u << 23)              /* G: limit counts pages */
		| (1u << 22)              /* D: 32-bit */
		| (1u << 15)              /* P: present */
		| (dpl << 13)
		| (1u << 12)              /* S: code or data, not a system segment */
		| (type << 8);
	return ((u64)high << 32) | low;
}

void load_gdt_entry(u32 index, u64 desc)
{
	hcall(LHCALL_LOAD_GDT_ENTRY, index, (u32)desc, (u32)(desc >> 32), 0);
}

/* LOAD_TLS reads the three descriptors from our memory when it runs, which
   in a context switch is later (the async ring): they must stay put. */
void load_tls(const u64 tls[3])
{
	lazy_hcall(LHCALL_LOAD_TLS, __pa(tls), 0, 0, 0);
}

void segments_init(void)
{
	load_gdt_entry(12, make_segment(0, 0xFFFFF, SEG_CODE, 0));   /* kernel CS */
	load_gdt_entry(13, make_segment(0, 0xFFFFF, SEG_DATA, 0));   /* kernel DS */
	load_gdt_entry(14, make_segment(0, 0xFFFFF, SEG_CODE, 3));   /* user CS */
	load_gdt_entry(15, make_segment(0, 0xFFFFF, SEG_DATA, 3));   /* user DS */

	/* Reload every segment register from the new entries. With the Host's
	   fixup, selector 0x69 (RPL 1) now names a DPL 1 segment. */
	__asm__ __volatile__(
		"ljmp %0, $1f\n"
		"1:\n\t"
		"movl %1, %%eax\n\t"
		"movl %%eax, %%ds\n\t"
		"movl %%eax, %%es\n\t"
		"movl %%eax, %%ss\n\t"
		"xorl %%eax, %%eax\n\t"
		"movl %%eax, %%fs\n\t"
		"movl %%eax, %%gs\n\t"
		: : "i"(KERNEL_CS), "i"(KERNEL_DS) : "eax", "memory");
}
