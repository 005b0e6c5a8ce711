/*
 * kvm_shim.c - ioctls, the vCPU run loop and its kick.
 *
 * Read kvm_shim.h first. Every function returns a negative errno on failure
 * so Python can raise an exception naming the ioctl; nothing here prints or
 * exits.
 */
#define _GNU_SOURCE
#include "kvm_shim.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/*
 * The kick is a real-time signal sent to the vCPU thread. Its handler does
 * nothing: the point is that KVM_RUN returns EINTR. It is installed without
 * SA_RESTART so a blocked KVM_RUN really returns.
 */
static int kick_signal(void) { return SIGRTMIN + 5; }

static void on_kick_signal(int sig) { (void)sig; }

static pthread_once_t signal_once = PTHREAD_ONCE_INIT;

static void install_kick_handler(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_kick_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(kick_signal(), &sa, NULL);
}

long shim_open(const char *path)
{
    int fd = open(path, O_RDWR | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

long shim_ioctl_int(int fd, unsigned long request, unsigned long arg)
{
    int r = ioctl(fd, request, arg);
    return r < 0 ? -errno : r;
}

long shim_ioctl_ptr(int fd, unsigned long request, void *arg)
{
    int r = ioctl(fd, request, arg);
    return r < 0 ? -errno : r;
}

long shim_vcpu_init(struct shim_vcpu *v, int fd, long run_size, uint32_t kick_vector)
{
    void *run;

    memset(v, 0, sizeof(*v));
    run = mmap(NULL, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (run == MAP_FAILED)
        return -errno;
    v->fd = fd;
    v->run = run;
    v->run_size = run_size;
    v->kick_vector = kick_vector;
    pthread_once(&signal_once, install_kick_handler);
    return 0;
}

void shim_vcpu_fini(struct shim_vcpu *v)
{
    v->thread_valid = 0;
    if (v->run)
        munmap(v->run, v->run_size);
    v->run = NULL;
}

/*
 * Make the kick vector arrive in the guest. With a userspace irqchip KVM lets
 * us inject only when the guest can take it (IF set, no event in flight);
 * otherwise we ask for an interrupt-window exit and inject then. The Switcher
 * runs with IF clear, so a kick that lands there waits until the iret back to
 * the guest, and enters the Switcher again at a clean instruction boundary.
 */
static long send_msi_kick(struct shim_vcpu *v)
{
    struct kvm_msi msi;

    memset(&msi, 0, sizeof(msi));
    msi.address_lo = 0xFEE00000;           /* physical destination, APIC ID 0 */
    msi.data = v->kick_vector;             /* fixed delivery, edge */
    if (ioctl(v->vm_fd, KVM_SIGNAL_MSI, &msi) < 0)
        return -errno;
    __atomic_add_fetch(&v->msi_kicks, 1, __ATOMIC_RELAXED);
    return 1;
}

static long inject_kick(struct shim_vcpu *v)
{
    struct kvm_interrupt irq;

    if (v->msi_kick)
        return send_msi_kick(v);

    if (!v->run->ready_for_interrupt_injection) {
        v->run->request_interrupt_window = 1;
        return 0;
    }
    irq.irq = v->kick_vector;
    if (ioctl(v->fd, KVM_INTERRUPT, &irq) < 0)
        return -errno;
    v->run->request_interrupt_window = 0;
    v->kicks_injected++;
    return 1;
}

/* This thread's CPU time (scheduler-exact, unlike /proc's ticks): a
 * system call, which is why only a measuring run pays for it. */
static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/*
 * Run until something Python must see: any exit except the ones this loop
 * uses to deliver kicks (EINTR from the kick signal, interrupt windows).
 * A kick is never lost: kick() sets kick_pending before it raises
 * immediate_exit and signals, and this loop checks kick_pending after every
 * KVM_RUN return, including the immediate one.
 */
static long run_loop(struct shim_vcpu *v)
{
    int injecting = 0;   /* a kick is waiting for an interrupt window */

    for (;;) {
        int r;

        /*
         * Clear immediate_exit *before* taking kick_pending: a kick that
         * lands after the exchange sets immediate_exit again afterwards,
         * so the KVM_RUN below returns at once instead of sleeping on it.
         */
        __atomic_store_n(&v->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&v->stop_pending, __ATOMIC_SEQ_CST))
            return SHIM_RUN_STOPPED;
        if (__atomic_exchange_n(&v->kick_pending, 0, __ATOMIC_SEQ_CST)) {
            long k = inject_kick(v);
            if (k < 0)
                return k;
            injecting = (k == 0);
        }
        if (v->account) {
            uint64_t before = thread_cpu_ns();
            int saved;
            __atomic_store_n(&v->run_since, before, __ATOMIC_SEQ_CST);
            r = ioctl(v->fd, KVM_RUN, 0);
            saved = errno;
            __atomic_add_fetch(&v->run_cpu_ns, thread_cpu_ns() - before, __ATOMIC_SEQ_CST);
            __atomic_store_n(&v->run_since, 0, __ATOMIC_SEQ_CST);
            errno = saved;
        } else {
            r = ioctl(v->fd, KVM_RUN, 0);
        }
        if (r < 0 || v->run->exit_reason == KVM_EXIT_INTR) {
            if (r < 0 && errno != EINTR && errno != EAGAIN)
                return -errno;
            v->eintr_exits++;
            if (__atomic_load_n(&v->stop_pending, __ATOMIC_SEQ_CST))
                return SHIM_RUN_STOPPED;
            if (__atomic_load_n(&v->kick_pending, __ATOMIC_SEQ_CST))
                continue;
            /*
             * Someone else's signal (^C, a timer of Python's): Python must
             * run its handlers now, even if a kick is still waiting for an
             * interrupt window that a misbehaving guest may never open.
             * Keep that kick for when Python calls us again.
             */
            if (injecting)
                __atomic_store_n(&v->kick_pending, 1, __ATOMIC_SEQ_CST);
            return SHIM_RUN_SIGNAL;
        }
        switch (v->run->exit_reason) {
        case KVM_EXIT_IRQ_WINDOW_OPEN:
            v->window_exits++;
            if (injecting) {
                long k = inject_kick(v);
                if (k < 0)
                    return k;
                injecting = (k == 0);
            } else {
                v->run->request_interrupt_window = 0;
            }
            continue;
        default:
            return v->run->exit_reason;
        }
    }
}

/*
 * Read from any thread (launcher-bench's marks): the KVM_RUNs that
 * returned, and the one under way, read on the vCPU thread's own CPU
 * clock. A read as a KVM_RUN ends may count its time twice, briefly; an
 * idle guest's single KVM_RUN of many seconds is counted as it goes.
 */
uint64_t shim_vcpu_run_cpu_ns(struct shim_vcpu *v)
{
    uint64_t done = __atomic_load_n(&v->run_cpu_ns, __ATOMIC_SEQ_CST);
    uint64_t since = __atomic_load_n(&v->run_since, __ATOMIC_SEQ_CST);
    clockid_t clock;
    struct timespec ts;
    uint64_t now;

    if (!since || !__atomic_load_n(&v->thread_valid, __ATOMIC_SEQ_CST))
        return done;
    if (pthread_getcpuclockid((pthread_t)v->vcpu_thread, &clock) != 0 ||
        clock_gettime(clock, &ts) != 0)
        return done;
    now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    return done + (now > since ? now - since : 0);
}

long shim_vcpu_run(struct shim_vcpu *v)
{
    long r;

    /* Only a thread inside KVM_RUN is signalled; one in Python is not. */
    v->vcpu_thread = (uint64_t)pthread_self();
    __atomic_store_n(&v->thread_valid, 1, __ATOMIC_SEQ_CST);
    r = run_loop(v);
    __atomic_store_n(&v->thread_valid, 0, __ATOMIC_SEQ_CST);
    return r;
}

/*
 * Raise a request flag, then make sure the vCPU thread notices: set
 * immediate_exit (for a thread about to enter KVM_RUN) and signal it (for
 * one inside). The flag comes first, so the run loop, which clears
 * immediate_exit before it reads the flags, can never miss it.
 */
static void poke(struct shim_vcpu *v, volatile int *flag)
{
    __atomic_store_n(flag, 1, __ATOMIC_SEQ_CST);
    if (v->run)
        __atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&v->thread_valid, __ATOMIC_SEQ_CST))
        pthread_kill((pthread_t)v->vcpu_thread, kick_signal());
}

/*
 * With the local APIC in KVM (Machine, "the clock in the VM") a kick is an
 * MSI to it: KVM makes the vCPU take the kick vector at its next
 * instruction boundary with IF set, waking it from a `hlt` if need be, and
 * the run loop never sees it. KVM_INTERRUPT is not used in that mode.
 * An MSI cannot be taken back, so one is sent only while the vCPU thread is
 * in the run loop: a kick that finds it in Python is left as kick_pending,
 * which Python's delivery step clears (it is about to deliver anyway) or
 * the run loop turns into the MSI before it enters KVM_RUN.
 */
void shim_vcpu_kick(struct shim_vcpu *v)
{
    if (v->msi_kick && __atomic_load_n(&v->thread_valid, __ATOMIC_SEQ_CST)
        && send_msi_kick(v) > 0)
        return;
    poke(v, &v->kick_pending);
}

/*
 * End the run from any thread: unlike a kick, this needs nothing from the
 * guest (no interrupt window), so it works even on a guest spinning at
 * ring 0 with interrupts off.
 */
void shim_vcpu_stop(struct shim_vcpu *v)
{
    poke(v, &v->stop_pending);
}

void shim_vcpu_clear_kick(struct shim_vcpu *v)
{
    __atomic_store_n(&v->kick_pending, 0, __ATOMIC_SEQ_CST);
    if (v->run)
        v->run->immediate_exit = 0;
}

void shim_memory_barrier(void)
{
    __atomic_thread_fence(__ATOMIC_SEQ_CST);   /* mfence: orders a store before a later load */
}

uint64_t shim_monotonic_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

long shim_bench_exit_loop(struct shim_vcpu *v, long n, uint16_t port, uint64_t *elapsed_ns)
{
    uint64_t start = shim_monotonic_ns();
    long i;

    for (i = 0; i < n; i++) {
        if (ioctl(v->fd, KVM_RUN, 0) < 0)
            return -errno;
        if (v->run->exit_reason != KVM_EXIT_IO || v->run->io.port != port)
            return -EPROTO;
    }
    *elapsed_ns = shim_monotonic_ns() - start;
    return n;
}

uint64_t shim_bench_getppid(long n)
{
    uint64_t start = shim_monotonic_ns();
    long i;

    for (i = 0; i < n; i++)
        (void)getppid();
    return shim_monotonic_ns() - start;
}
