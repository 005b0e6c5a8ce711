/*
 * hello.S - the smallest lguest guest: a stand-in for the bundled guest.
 *
 * It boots the way a G2 Linux guest does (ring 1, linear mode, LGUEST_INIT
 * with its own lguest_data), prints through the early console (NOTIFY with
 * the address of a string) and powers off with SHUTDOWN("Power down").
 * The project's own guest kernel (images/) replaces it as the default.
 */
        .set LHCALL_LGUEST_INIT, 1
        .set LHCALL_SHUTDOWN, 2
        .set LHCALL_NOTIFY, 17
        .set LGUEST_SHUTDOWN_POWEROFF, 1

        .code32
        .text
        .globl _start
_start:
        movl $stack_top, %esp
        movl $LHCALL_LGUEST_INIT, %eax
        movl $lguest_data, %ebx
        int $0x1f
        movl $hello, %ebx
        call early_print
        movl $LHCALL_SHUTDOWN, %eax
        movl $power_down, %ebx
        movl $LGUEST_SHUTDOWN_POWEROFF, %ecx
        int $0x1f
1:      jmp 1b

/*
 * launcher-bench's entry: ebp null hypercalls timed with rdtsc. The cycle
 * count lands in bench_cycles, which the benchmark reads after poweroff.
 */
        .globl bench_hcall, bench_cycles
bench_hcall:
        movl $stack_top, %esp
        movl $LHCALL_LGUEST_INIT, %eax
        movl $lguest_data, %ebx
        int $0x1f
        rdtsc
        movl %eax, %esi
        movl %edx, %edi
        movl %ebp, %ecx
4:      xorl %eax, %eax             /* LHCALL_FLUSH_ASYNC: does nothing */
        int $0x1f
        decl %ecx
        jnz 4b
        rdtsc
        subl %esi, %eax
        sbbl %edi, %edx
        movl %eax, bench_cycles
        movl %edx, bench_cycles + 4
        movl $LHCALL_SHUTDOWN, %eax
        movl $power_down, %ebx
        movl $LGUEST_SHUTDOWN_POWEROFF, %ecx
        int $0x1f
5:      jmp 5b

/* The early console takes at most 16 characters per NOTIFY, as Linux's
   early hvc console sends them: copy chunks into a small buffer. */
early_print:
        movl $chunk, %edi
        movl $16, %ecx
2:      movb (%ebx), %al
        movb %al, (%edi)
        testb %al, %al
        jz 3f
        incl %ebx
        incl %edi
        decl %ecx
        jnz 2b
        movb $0, (%edi)
3:      pushl %ebx
        movl $LHCALL_NOTIFY, %eax
        movl $chunk, %ebx
        int $0x1f
        popl %ebx
        cmpb $0, (%ebx)
        jne early_print
        ret

        .data
hello:
        .asciz "Hello from an lguest guest running on KVM!\n"
power_down:
        .asciz "Power down"
        .balign 8
bench_cycles:
        .long 0, 0
lguest_data:                        /* G2 layout, docs/abi.md §4 */
        .long 0, 1
        .fill 16, 1, 0
        .fill 64, 1, 0xff
        .fill 1280, 1, 0
        .long 0, 0, 0, 0
        .long 0xC0000000, 0x80

        .bss
chunk:
        .space 20
        .balign 16
        .space 4096
stack_top:
