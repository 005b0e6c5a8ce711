/*
 * kvm_shim.h - the whole C surface of lguest-on-KVM.
 *
 * Mechanism only: open /dev/kvm, issue ioctls, run a vCPU until something
 * happens that Python must see, and kick a running vCPU from another thread.
 * Nothing here knows about lguest; the policy is Python's (launcher/host/).
 * The Python side reaches this file through exactly one module,
 * launcher/kvm.py.
 */
#ifndef LGUEST_KVM_SHIM_H
#define LGUEST_KVM_SHIM_H

#include <stdint.h>
#include <linux/kvm.h>

/* cffi-begin: native/build_ffi.py hands everything up to cffi-end to cffi. */

/* Per-vCPU state the run loop and kick() share. */
struct shim_vcpu {
    int fd;                       /* the vCPU file descriptor */
    struct kvm_run *run;          /* its mmap()ed kvm_run page */
    long run_size;
    uint32_t kick_vector;         /* interrupt vector a kick injects */
    int vm_fd;                    /* for KVM_SIGNAL_MSI */
    int msi_kick;                 /* 1: the LAPIC is in KVM, a kick is an MSI */
    volatile int kick_pending;    /* set by kick(), consumed by the run loop */
    volatile int stop_pending;    /* set by stop(): return to Python, whatever the guest does */
    volatile int thread_valid;    /* vcpu_thread below is meaningful */
    uint64_t vcpu_thread;         /* pthread_t of the thread in shim_vcpu_run */
    /* Counters of exits the loop absorbed without returning to Python. */
    uint64_t kicks_injected;
    uint64_t window_exits;
    uint64_t eintr_exits;
    uint64_t msi_kicks;           /* kicks sent as an MSI (in-kernel LAPIC) */
    /* Measurement only (launcher-bench): with account set, the thread CPU
     * time spent inside KVM_RUN (KVM's own work and the guest's code), so
     * the launcher's own share is the process's time less this. */
    int account;
    uint64_t run_cpu_ns;          /* KVM_RUNs that returned */
    uint64_t run_since;           /* the thread's CPU clock as the current one began; 0: none */
};

long shim_open(const char *path);
long shim_ioctl_int(int fd, unsigned long request, unsigned long arg);
long shim_ioctl_ptr(int fd, unsigned long request, void *arg);

long shim_vcpu_init(struct shim_vcpu *v, int fd, long run_size, uint32_t kick_vector);
void shim_vcpu_fini(struct shim_vcpu *v);
long shim_vcpu_run(struct shim_vcpu *v);
void shim_vcpu_kick(struct shim_vcpu *v);
void shim_vcpu_clear_kick(struct shim_vcpu *v);
void shim_vcpu_stop(struct shim_vcpu *v);
/* With account set: CPU time inside KVM_RUN so far, the current one too. */
uint64_t shim_vcpu_run_cpu_ns(struct shim_vcpu *v);

/* The exit floor: KVM_RUN n times on a guest that does nothing but `out`. */
long shim_bench_exit_loop(struct shim_vcpu *v, long n, uint16_t port, uint64_t *elapsed_ns);
/* getppid() n times, timed in C: the host system-call floor. */
uint64_t shim_bench_getppid(long n);
uint64_t shim_monotonic_ns(void);
/* A full fence, for rings shared with a guest running on another CPU. */
void shim_memory_barrier(void);

/* cffi-end */

/* Result codes of shim_vcpu_run besides a KVM exit reason (which are >= 0). */
#define SHIM_RUN_SIGNAL   (-1000)  /* a signal that was not a kick: let Python run handlers */
#define SHIM_RUN_STOPPED  (-1001)  /* stop() was called: the run is over */

#endif
