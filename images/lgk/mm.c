/*
 * mm.c - physical pages and page tables.
 *
 * The Host uses the hardware to walk our page tables, but the ABI still says
 * what to tell it when they change (docs/abi.md §7), and we honour that:
 *
 *   a new or changed PTE            SET_PTE(top, vaddr, pte)
 *   a top-level entry               SET_PGD(top, index)   (PAE: the PDPT)
 *   a PAE middle-level entry        SET_PMD(pmd page, index)
 *   many user mappings at once      FLUSH_TLB(0)
 *   kernel mappings changed         FLUSH_TLB(1)
 *   a different address space       NEW_PGTABLE(top)
 *
 * Inside a lazy section (lguest.c) these calls are queued in the async ring.
 *
 * Kernel space is the same in every address space: RAM from PAGE_OFFSET up
 * ("lowmem"), right after it a window for the lguest bus's pages (the device
 * page and the rings, which lie above RAM: virtio.c maps them), and a 4 MiB
 * test area just below the top region the Host reserved for itself
 * (reserve_mem, which we never map). With PAE, every
 * address space shares one kernel PMD (PDPT slot 3); without PAE, each copies
 * the kernel's page-directory entries when it is created. Kernel tables are
 * all made at boot, so those copies never go stale.
 */
#include "lgk.h"

extern char _end[];

struct mm kernel_mm;
u32 lowmem_end, test_area, kernel_hole;
u32 dev_window, dev_window_pa;
#ifdef CONFIG_PAE
u64 *kernel_pmd;
#endif
static u32 reserve_top;       /* the Host's region, rounded up to 4 MiB */

/* ---- physical pages: a bump allocator plus a free list ------------------------ */
static u32 alloc_next, alloc_end, free_head, nfree;

u32 page_alloc(void)
{
	u32 flags = irq_save(), pa = 0;
	if (free_head) {
		pa = free_head;
		free_head = *(u32 *)__va(pa);
		nfree--;
	} else if (alloc_next < alloc_end) {
		pa = alloc_next;
		alloc_next += PAGE_SIZE;
	}
	irq_restore(flags);
	if (pa)
		memset(__va(pa), 0, PAGE_SIZE);
	return pa;
}

void page_free(u32 pa)
{
	u32 flags = irq_save();
	*(u32 *)__va(pa) = free_head;
	free_head = pa;
	nfree++;
	irq_restore(flags);
}

u32 pages_free(void)
{
	return nfree + (alloc_end - alloc_next) / PAGE_SIZE;
}

static void mm_track(struct mm *mm, u32 pa)
{
	if (mm->npages < ARRAY_SIZE(mm->pages))
		mm->pages[mm->npages++] = pa;
	else
		panic("address space has too many pages");
}

/* ---- walking and changing tables ---------------------------------------------- */

/* The PTE for vaddr in mm, making the tables above it if alloc (and
   reporting each new table entry to the Host). NULL if there is none. */
pte_t *mm_walk(struct mm *mm, u32 vaddr, int alloc, int user)
{
	u32 table_flags = user ? TABLE_USER : TABLE_KERNEL;
#ifdef CONFIG_PAE
	u64 *pdpt = mm->top;
	u32 i = vaddr >> 30, j = (vaddr >> 21) & 511;
	if (!(pdpt[i] & _PAGE_PRESENT)) {
		if (!alloc)
			return NULL;
		u32 pmd_pa = page_alloc();
		mm_track(mm, pmd_pa);
		set_pgd_entry(mm, i, pmd_pa | PDPT_PRESENT);
	}
	u64 *pmd = __va((u32)pdpt[i] & ~0xFFFu);
	if (!(pmd[j] & _PAGE_PRESENT)) {
		if (!alloc)
			return NULL;
		u32 pt_pa = page_alloc();
		mm_track(mm, pt_pa);
		set_pmd_entry(pmd, j, pt_pa | table_flags);
	}
	pte_t *pt = __va((u32)pmd[j] & ~0xFFFu);
	return &pt[(vaddr >> 12) & 511];
#else
	u32 *pgd = mm->top;
	u32 i = vaddr >> 22;
	if (!(pgd[i] & _PAGE_PRESENT)) {
		if (!alloc)
			return NULL;
		u32 pt_pa = page_alloc();
		mm_track(mm, pt_pa);
		set_pgd_entry(mm, i, pt_pa | table_flags);
	}
	pte_t *pt = __va(pgd[i] & ~0xFFFu);
	return &pt[(vaddr >> 12) & 1023];
#endif
}

static void write_pte(struct mm *mm, u32 vaddr, pte_t pte,
		      void (*tell)(u32, u32, u32, u32, u32))
{
	pte_t *p = mm_walk(mm, vaddr, 1, vaddr < PAGE_OFFSET);
	*p = pte;
#ifdef CONFIG_PAE
	tell(LHCALL_SET_PTE, mm->top_pa, vaddr, (u32)pte, (u32)(pte >> 32));
#else
	tell(LHCALL_SET_PTE, mm->top_pa, vaddr, pte, 0);
#endif
}

/* Filling a PTE that was not present: no TLB can hold it, so the Host
   needs no word before we use the mapping (the hardware walks our tables).
   SET_PTE is queued and reaches the Host with the next synchronous call:
   a demand fault then costs no exit at all with the Switcher's fast path. */
void mm_fill_pte(struct mm *mm, u32 vaddr, pte_t pte)
{
	write_pte(mm, vaddr, pte, queue_hcall);
}

void mm_set_pte(struct mm *mm, u32 vaddr, pte_t pte)
{
	write_pte(mm, vaddr, pte, lazy_hcall);
}

void set_pgd_entry(struct mm *mm, u32 index, u64 value)
{
#ifdef CONFIG_PAE
	((u64 *)mm->top)[index] = value;
	lazy_hcall(LHCALL_SET_PGD, mm->top_pa & ~0x1Fu, index, 0, 0);
#else
	((u32 *)mm->top)[index] = (u32)value;
	lazy_hcall(LHCALL_SET_PGD, mm->top_pa, index, 0, 0);
#endif
}

#ifdef CONFIG_PAE
void set_pmd_entry(u64 *pmd, u32 index, u64 value)
{
	pmd[index] = value;
	lazy_hcall(LHCALL_SET_PMD, __pa(pmd), index, 0, 0);
}
#endif

void flush_tlb_kernel(void) { lazy_hcall(LHCALL_FLUSH_TLB, 1, 0, 0, 0); }
void flush_tlb_user(void) { lazy_hcall(LHCALL_FLUSH_TLB, 0, 0, 0, 0); }
void mm_switch(struct mm *mm) { lazy_hcall(LHCALL_NEW_PGTABLE, mm->top_pa, 0, 0, 0); }

/* ---- the kernel's tables ----------------------------------------------------------
 * Built while the boot tables from head.S are live, without telling the Host
 * entry by entry (it has not seen these tables yet; NEW_PGTABLE shows it all
 * of them at once). Every page we allocate here lies in the first 8 MiB,
 * which the boot tables map. */
static void *boot_alloc(void)
{
	u32 pa = page_alloc();
	if (!pa || pa >= (8u << 20))
		panic("out of early memory");
	return __va(pa);
}

static pte_t *kernel_pt_for(u32 vaddr)
{
#ifdef CONFIG_PAE
	u32 j = (vaddr - PAGE_OFFSET) >> 21;
	if (!(kernel_pmd[j] & _PAGE_PRESENT))
		kernel_pmd[j] = __pa(boot_alloc()) | TABLE_KERNEL;
	return __va((u32)kernel_pmd[j] & ~0xFFFu);
#else
	u32 *pgd = kernel_mm.top, i = vaddr >> 22;
	if (!(pgd[i] & _PAGE_PRESENT))
		pgd[i] = __pa(boot_alloc()) | TABLE_KERNEL;
	return __va(pgd[i] & ~0xFFFu);
#endif
}

void mm_init(void)
{
	/* Keep off the Host's top region: reserve_mem, rounded up to whole
	   4 MiB page-directory slots (and at least one). */
	reserve_top = ALIGN_UP(lguest_data.reserve_mem, 4u << 20);
	if (reserve_top < (4u << 20))
		reserve_top = 4u << 20;
	u32 kernel_top = 0u - reserve_top;           /* first byte we must not map */
	test_area = kernel_top - (4u << 20);

	lowmem_end = mem_size;
	if (lowmem_end > test_area - PAGE_OFFSET - (16u << 20))
		lowmem_end = test_area - PAGE_OFFSET - (16u << 20);
	kernel_hole = PAGE_OFFSET + ALIGN_UP(lowmem_end, 4u << 20) + (4u << 20);

	alloc_next = ALIGN_UP(__pa(_end), PAGE_SIZE);
	alloc_end = ALIGN_DOWN(lowmem_end, PAGE_SIZE);

	kernel_mm.top = boot_alloc();
	kernel_mm.top_pa = __pa(kernel_mm.top);
#ifdef CONFIG_PAE
	kernel_pmd = boot_alloc();
	((u64 *)kernel_mm.top)[3] = __pa(kernel_pmd) | PDPT_PRESENT;
#endif
	for (u32 pa = 0; pa < lowmem_end; pa += PAGE_SIZE) {
		u32 va = PAGE_OFFSET + pa;
		kernel_pt_for(va)[(va >> 12) % PTRS_PER_PT] = pa | PTE_KERNEL;
	}
	/* The device window and the test area get their (empty) tables now,
	   so that every address space made later shares them. */
	dev_window_pa = ALIGN_UP(mem_size, PAGE_SIZE);
	dev_window = PAGE_OFFSET + ALIGN_UP(lowmem_end, PAGE_SIZE);
	for (u32 i = 0; i < DEV_WINDOW_PAGES; i++)
		(void)kernel_pt_for(dev_window + i * PAGE_SIZE);
	for (u32 va = test_area; va < kernel_top && va >= test_area; va += 2u << 20)
		(void)kernel_pt_for(va);

	hcall(LHCALL_NEW_PGTABLE, kernel_mm.top_pa, 0, 0, 0);
	/* From here on, low addresses are no longer mapped: a NULL pointer
	   faults, and physical memory is reached only through __va(). */
}

/* The lguest bus's pages: guest-physical [mem, mem + 4 KiB * (1 + 3 * queues)),
   above the RAM e820 reports but below the Host's pfn_limit. They appear in
   the device window at the same offsets. NULL if pa..pa+n is not there. */
void *map_device_pages(u32 pa, u32 npages)
{
	u32 end = dev_window_pa + DEV_WINDOW_PAGES * PAGE_SIZE;
	if ((pa & (PAGE_SIZE - 1)) || pa < dev_window_pa || npages > DEV_WINDOW_PAGES ||
	    pa + npages * PAGE_SIZE > end)
		return NULL;
	u32 va = dev_window + (pa - dev_window_pa);
	lazy_begin();
	for (u32 i = 0; i < npages; i++)
		mm_set_pte(&kernel_mm, va + i * PAGE_SIZE, (pte_t)(pa + i * PAGE_SIZE) | PTE_KERNEL);
	lazy_end();
	return (void *)va;
}

/* ---- user address spaces --------------------------------------------------------- */
static struct mm mm_pool[8];

struct mm *mm_create_user(void)
{
	struct mm *mm = NULL;
	for (u32 i = 0; i < ARRAY_SIZE(mm_pool); i++)
		if (!mm_pool[i].top) {
			mm = &mm_pool[i];
			break;
		}
	if (!mm)
		return NULL;
	memset(mm, 0, sizeof(*mm));
	mm->top_pa = page_alloc();
	mm->top = __va(mm->top_pa);
#ifdef CONFIG_PAE
	((u64 *)mm->top)[3] = __pa(kernel_pmd) | PDPT_PRESENT;
#else
	u32 *pgd = mm->top, *kpgd = kernel_mm.top;
	for (u32 i = PAGE_OFFSET >> 22; i < (0u - reserve_top) >> 22; i++)
		pgd[i] = kpgd[i];
#endif
	lazy_begin();
	/* The ring-3 programs, read-only, at the address they were linked for. */
	u32 size = ALIGN_UP((u32)(__user_end - __user_start), PAGE_SIZE);
	for (u32 off = 0; off < size; off += PAGE_SIZE)
		mm_set_pte(mm, USER_CODE + off, ((u32)__user_pa + off) | PTE_USER_RO);
	/* One private data page, and a stack page. */
	u32 data = page_alloc(), stack = page_alloc();
	mm_track(mm, data);
	mm_track(mm, stack);
	mm->data_pa = data;
	mm_set_pte(mm, USER_DATA, data | PTE_USER_RW);
	mm_set_pte(mm, USER_STACK_TOP - PAGE_SIZE, stack | PTE_USER_RW);
	lazy_end();
	return mm;
}

void mm_destroy(struct mm *mm)
{
	for (u32 i = 0; i < mm->npages; i++)
		page_free(mm->pages[i]);
	page_free(mm->top_pa);
	mm->top = NULL;
}
