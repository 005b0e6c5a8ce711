/*
 * head.S - the first instructions lgk runs.
 *
 * The Launcher put the kernel at physical 1 MiB and the Host starts us here,
 * at ring 1, in "linear mode": every address below the end of RAM maps to
 * the same physical address, supervisor only (docs/abi.md §1.4-1.5). esi
 * holds the physical address of boot_params (the "zero page").
 *
 * We are linked at 0xC0100000 but running at 0x00100000, so until paging
 * with our own tables is on, every address we touch goes through PA().
 *
 * Steps:
 *   1. a stack, remember boot_params, clear .bss;
 *   2. LGUEST_INIT: tell the Host where our lguest_data is (always first);
 *   3. build boot page tables mapping the first BOOT_MAP bytes of RAM both at
 *      0 (where we run now) and at PAGE_OFFSET (where we are linked);
 *   4. NEW_PGTABLE: switch to them, which ends linear mode;
 *   5. jump to kmain() at its linked (virtual) address.
 *
 * mm.c later replaces these tables with ones mapping all of RAM.
 */
#include "../lguest.h"

#define PAGE_OFFSET   0xC0000000
#define PA(x)         ((x) - PAGE_OFFSET)
#define BOOT_MAP      (8 << 20)          /* what the boot tables cover */
#define FALLBACK_MEM  (16 << 20)         /* if boot_params has no e820 map */
#define TABLE_KERNEL  0x063              /* P RW A D */
#define PTE_BOOT      0x063

/* boot_params fields (docs/abi.md §1.2) */
#define BP_E820_ENTRIES 0x1E8
#define BP_E820_SIZE    0x2D8            /* e820_map[0].size, a u64 */

	.section .head.text, "ax"
	.code32
	.globl startup_32
startup_32:
	cld
	movl $PA(boot_stack_top), %esp
	movl %esi, PA(boot_params_pa)        /* .data: survives the bss clear */

	/* 1. Clear .bss (the Launcher zero-fills RAM, but do not rely on it). */
	movl $PA(__bss_start), %edi
	movl $PA(__bss_end), %ecx
	subl %edi, %ecx
	shrl $2, %ecx
	xorl %eax, %eax
	rep stosl

	/* 2. LGUEST_INIT(__pa(&lguest_data)). Until this call the Host accepts
	 *    no other hypercall. */
	movl $LHCALL_LGUEST_INIT, %eax
	movl $PA(lguest_data), %ebx
	int $LGUEST_TRAP_ENTRY

	/* 3. How much to map: min(BOOT_MAP, RAM). A page-table entry pointing
	 *    past RAM would kill us, so never map more than e820 says. */
	movl $FALLBACK_MEM, %eax
	movl PA(boot_params_pa), %esi
	cmpb $0, BP_E820_ENTRIES(%esi)
	je 2f
	cmpl $0, BP_E820_SIZE + 4(%esi)      /* 4 GiB or more */
	jne 1f
	movl BP_E820_SIZE(%esi), %edx
	testl %edx, %edx
	jz 2f
	movl %edx, %eax
	jmp 2f
1:	movl $BOOT_MAP, %eax
2:	cmpl $BOOT_MAP, %eax
	jbe 3f
	movl $BOOT_MAP, %eax
3:	shrl $12, %eax
	movl %eax, %ecx                      /* pages to map */

	/* The PTEs: page i -> physical i * 4096. */
	movl $PA(boot_pt), %edi
	movl $PTE_BOOT, %eax
4:	movl %eax, (%edi)
#ifdef CONFIG_PAE
	addl $8, %edi                        /* high half stays 0 (.bss) */
#else
	addl $4, %edi
#endif
	addl $4096, %eax
	loop 4b

#ifdef CONFIG_PAE
	/* PAE: one PMD whose first four entries cover 8 MiB, used for both
	 * PDPT slot 0 (identity) and slot 3 (PAGE_OFFSET). PDPT entries carry
	 * only the present bit: that is how the Host recognises PAE. */
	movl $PA(boot_pt) + TABLE_KERNEL, %eax
	movl $PA(boot_pmd), %edi
	movl $(BOOT_MAP >> 21), %ecx
5:	movl %eax, (%edi)
	addl $8, %edi
	addl $4096, %eax
	loop 5b
	movl $PA(boot_pmd) + 1, %eax
	movl %eax, PA(boot_top)
	movl %eax, PA(boot_top) + 3 * 8
#else
	/* Non-PAE: two page directory entries at 0 and the same two at 768
	 * (PAGE_OFFSET >> 22). */
	movl $PA(boot_pt) + TABLE_KERNEL, %eax
	xorl %edi, %edi
	movl $(BOOT_MAP >> 22), %ecx
5:	movl %eax, PA(boot_top)(,%edi,4)
	movl %eax, PA(boot_top) + 768 * 4(,%edi,4)
	incl %edi
	addl $4096, %eax
	loop 5b
#endif

	/* 4. NEW_PGTABLE(__pa(boot_top)): from here the Host walks our tables. */
	movl $LHCALL_NEW_PGTABLE, %eax
	movl $PA(boot_top), %ebx
	int $LGUEST_TRAP_ENTRY

	/* 5. Into the kernel proper, at its virtual address. */
	movl $boot_stack_top, %esp
	xorl %ebp, %ebp
	movl $kmain, %eax
	jmp *%eax

	.data
	.globl boot_params_pa
	.balign 4
boot_params_pa:
	.long 0

	.bss
	.balign 4096
	.globl boot_top, boot_stack, boot_stack_top
boot_top:                                /* page directory, or PAE PDPT */
	.space 4096
#ifdef CONFIG_PAE
boot_pmd:
	.space 4096
boot_pt:
	.space (BOOT_MAP >> 12) * 8
#else
boot_pt:
	.space (BOOT_MAP >> 12) * 4
#endif
boot_stack:                              /* kmain's stack: two pages */
	.space 8192
boot_stack_top:
