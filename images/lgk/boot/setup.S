/*
 * setup.S - the first two sectors of lgk.bzImage: a boot sector and the
 * setup header of the Linux/x86 boot protocol (Documentation/x86/boot.txt in
 * Linux; the fields are also listed in docs/abi.md §1.2-1.3).
 *
 * An lguest Launcher reads this header, copies everything after the setup
 * sectors to physical 1 MiB and starts it at code32_start, at ring 1 with
 * paging already on. Nothing here runs then: lgk's protected-mode part is
 * the kernel itself, uncompressed, so no decompressor is needed and the
 * entry at 1 MiB is head.S's startup_32.
 *
 * The 16-bit code below runs only if a PC BIOS or a real-mode boot loader
 * starts the image: it says that lgk needs an lguest Launcher and stops.
 *
 * build.py links this at address 0 and fills in three values with --defsym:
 *   lgk_setup_sects  sectors of setup after the boot sector (1)
 *   lgk_syssize      the protected-mode part, in 16-byte units
 *   lgk_init_size    memory the kernel needs from 1 MiB, bss included
 */
	.code16
	.section .text, "ax"
	.globl _start
_start:
/* ---- offset 0: the boot sector, as a BIOS would run it at 0x7C00 ---- */
	ljmp $0x07C0, $bios_start - _start
bios_start:
	movw %cs, %ax
	movw %ax, %ds
	jmp say_and_stop

/* Print the message at ds:msg through the BIOS, then halt forever. */
say_and_stop:
	movw $msg, %si
	cld
1:	lodsb
	testb %al, %al
	jz 2f
	movb $0x0E, %ah                 /* teletype output */
	movw $0x0007, %bx
	int $0x10
	jmp 1b
2:	cli
3:	hlt
	jmp 3b

msg:
	.asciz "lgk: this kernel runs only under an lguest Launcher.\r\n"

/* ---- offset 0x1F1: the setup header ---- */
	.org 0x1F1
setup_sects:	.byte lgk_setup_sects
root_flags:	.word 0
syssize:	.long lgk_syssize
ram_size:	.word 0
vid_mode:	.word 0xFFFF             /* "normal" */
root_dev:	.word 0
boot_flag:	.word 0xAA55

/* ---- offset 0x200: a real-mode loader jumps here with cs = setup + 0x20 ---- */
	.byte 0xEB                      /* jmp short setup_start */
	.byte setup_start - 1f
1:
header:		.ascii "HdrS"             /* 0x202: the magic */
version:	.word 0x020A              /* 0x206: boot protocol 2.10 */
realmode_swtch:	.long 0
start_sys_seg:	.word 0x1000
kernel_version:	.word kernel_version_str - 0x200   /* 0x20E */
type_of_loader:	.byte 0                  /* 0x210: the loader fills it in */
loadflags:	.byte 0x01               /* 0x211: LOADED_HIGH: we go at 1 MiB.
					    The Launcher adds KEEP_SEGMENTS (0x40);
					    head.S never reloads segments before
					    LGUEST_INIT, so it is honoured. */
setup_move_size: .word 0x8000
code32_start:	.long 0x100000           /* 0x214: head.S's startup_32 */
ramdisk_image:	.long 0
ramdisk_size:	.long 0
bootsect_kludge: .long 0
heap_end_ptr:	.word 0
ext_loader_ver:	.byte 0
ext_loader_type: .byte 0
cmd_line_ptr:	.long 0                  /* 0x228: the loader fills it in */
initrd_addr_max: .long 0x37FFFFFF
kernel_alignment: .long 0x100000         /* 0x230 */
relocatable_kernel: .byte 0             /* we must be at exactly 1 MiB */
min_alignment:	.byte 12
xloadflags:	.word 0
cmdline_size:	.long 255                /* 0x238: lgk keeps 255 bytes of it */
hardware_subarch: .long 0                /* 0x23C: the loader sets 1 = lguest */
hardware_subarch_data: .quad 0
payload_offset:	.long 0                  /* no compressed payload */
payload_length:	.long 0
setup_data:	.quad 0
pref_address:	.quad 0x100000           /* 0x258 */
init_size:	.long lgk_init_size      /* 0x260 */
handover_offset: .long 0

/* Real-mode entry from a boot loader: cs = (load segment + 0x20), so our
   data is at ds = cs - 0x20 with offsets as in this file. */
setup_start:
	movw %cs, %ax
	subw $0x20, %ax
	movw %ax, %ds
	jmp say_and_stop

kernel_version_str:
	.asciz "lgk 0.1 (lguest-on-KVM teaching kernel, lguest G2 ABI)"

	.org 0x400                      /* pad to the end of the setup sector */
