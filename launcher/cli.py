"""The ``launcher`` command.

    launcher [options] [KERNEL] [-- GUEST ARGS...]

With no KERNEL it boots the bundled guest. Exit status: 0 the guest powered
off; 1 it crashed, panicked or was killed (the reason on stderr); 2 a usage
or input error; 3 it asked to reboot and --no-reboot was given; 124 the
--timeout expired; 130 it was stopped by three ^C or a signal.

On a host whose KVM cannot run 32-bit paged guests (docs/architecture.md,
"Where it runs, and the testbed") the command says so and re-runs itself
inside the testbed VM.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, NoReturn

from . import __version__
from .errors import UserError
from .kvm import KvmError
from .fastpaths import fast_clock_default, fast_paths_default
from .run import Session
from .terminal import guest_owns_terminal, stdin_fd

if TYPE_CHECKING:
    from .run import GuestConfig

EXIT_POWEROFF, EXIT_CRASH, EXIT_USAGE, EXIT_RESTART = 0, 1, 2, 3
EXIT_TIMEOUT, EXIT_INTERRUPTED = 124, 130
MAX_MEM = 3 << 30            # a 32-bit guest's RAM must end below its 4 GiB
MIN_MEM = 4 << 20

_SIZE = re.compile(r"^(\d+)([KMG]?)(i?B)?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'64M', '1G', '512K', or a bare number of MiB, in bytes."""
    m = _SIZE.match(text.strip())
    if not m:
        raise UserError(f"cannot understand the size {text!r} (try 64M, 1G or 512K)")
    number, unit = int(m.group(1)), m.group(2).upper()
    return number << {"": 20, "K": 10, "M": 20, "G": 30}[unit]


EXIT_STATUSES = """exit status:
  0    the guest powered off
  1    it crashed, panicked or was killed (one line on stderr, "launcher: ...")
  2    a usage or input error (one sentence; no guest ran)
  3    it asked to reboot and --no-reboot was given
  124  the --timeout expired (counted from when the command started)
  130  three ^C within a second, or a signal, stopped it"""


class Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one sentence (no usage block), exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (launcher --help lists the options)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="launcher",
        usage="launcher [options] [KERNEL] [-- GUEST ARGS...]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run an lguest paravirtual i386 guest on KVM. With no KERNEL the "
                    "bundled guest boots\n(it self-tests the Host and powers off); "
                    "GUEST ARGS go on the guest's command line.",
        epilog="KERNEL is an i386 bzImage or vmlinux-style ELF with lguest guest support "
               "(Linux 2.6.23-4.13);\nlguest's own form `launcher 64 vmlinux args...` "
               "(memory in MiB first) works too.\n\n"
               "LGUEST_FAST_PATHS=off in the environment makes every --no-fast-* "
               "option the default;\nLGUEST_FAST_CLOCK=off makes --no-fast-clock the default.\n\n"
               + EXIT_STATUSES)
    p.add_argument("kernel", nargs="?", metavar="KERNEL", help="guest kernel image")
    p.add_argument("guest_args", nargs="*", metavar="GUEST ARGS",
                   help="the guest's command line (after KERNEL, or after --)")
    p.add_argument("--version", action="version",
                   version=f"launcher (lguest-on-KVM) {__version__}")
    p.add_argument("--mem", "-m", default="64M", metavar="SIZE",
                   help="guest RAM: 64M, 1G, 512K or MiB (default 64M)")
    p.add_argument("--initrd", metavar="FILE", help="initial ramdisk for the guest")
    p.add_argument("--append", metavar="TEXT", default="",
                   help="guest kernel command line (GUEST ARGS are appended to it)")
    p.add_argument("--block", action=AddDevice, metavar="FILE[,ro]",
                   help="a virtio disk backed by FILE (repeatable; ,ro for read-only)")
    p.add_argument("--net", action=AddDevice, metavar="user[,hostfwd=...][,mac=MAC]",
                   help="a virtio network card on user-mode networking through passt, no "
                        "root needed: the guest is 10.0.2.15 by DHCP, the host 10.0.2.2; "
                        "hostfwd=tcp::2222-:22 forwards a host port in (repeatable)")
    p.add_argument("--tunnet", action=AddDevice, metavar="IP[:MAC]|bridge:BR[:MAC]",
                   help="a virtio network card on a new tap device whose host side gets IP "
                        "(a /24), or joins bridge BR (repeatable; needs root)")
    p.add_argument("--rng", action=AddDevice, nargs=0,
                   help="a virtio rng fed from the host's /dev/urandom")
    p.add_argument("--no-reboot", action="store_true",
                   help="exit with status 3 when the guest reboots, instead of restarting it")
    p.add_argument("--stats", action="store_true",
                   help="print exits by kind, with counts and time, when the guest ends")
    p.add_argument("--trace", metavar="FILE",
                   help="write every exit to FILE as Chrome trace-event JSON (opens in Perfetto)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="stop the guest SECONDS after the command started (a testbed's "
                        "boot counts) and exit with status 124")
    pae = p.add_mutually_exclusive_group()
    pae.add_argument("--pae", dest="pae", action="store_true", default=None,
                     help="the guest uses PAE page tables (default: told from its first table)")
    pae.add_argument("--no-pae", dest="pae", action="store_false",
                     help="the guest uses two-level (non-PAE) page tables")
    p.add_argument("--no-fast-traps", dest="fast_traps", action="store_false",
                   help="take page faults, system calls through an interrupt gate, SET_PTE, "
                        "and port I/O and CPUID answers through the Python Host instead of "
                        "letting the Switcher do them (slower; the reference behaviour)")
    clock = p.add_mutually_exclusive_group()
    clock.add_argument("--fast-clock", dest="fast_clock", action="store_true",
                       help="keep the guest's clock event, HALT and timer interrupt in the VM "
                            "(KVM's local APIC and the Switcher): hundreds of exits a second "
                            "fewer when idle (the default)")
    clock.add_argument("--no-fast-clock", dest="fast_clock", action="store_false",
                       help="take them through the Python Host, with no local APIC in KVM "
                            "(slower; the reference behaviour)")
    p.add_argument("--no-ioeventfd", dest="ioeventfd", action="store_false",
                   help="G3 guests: take queue kicks as MMIO exits handled in Python, not "
                        "as KVM ioeventfds (slower; for measuring and debugging)")
    # LGUEST_FAST_PATHS=off makes every fast path default to off (CI runs both ways).
    p.set_defaults(fast_traps=fast_paths_default(), fast_clock=fast_clock_default(),
                   ioeventfd=fast_paths_default())
    p.add_argument("--no-testbed", action="store_true",
                   help="where this host's KVM cannot run lguest guests, stop instead of "
                        "re-running inside the testbed VM")
    p.add_argument("--user", "-u", metavar="USER",
                   help="after setting up, run as USER (name or uid); needs root")
    p.add_argument("--chroot", metavar="DIR",
                   help="after setting up, chroot into DIR; needs root")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="say what the launcher does: the kernel's generation, the memory "
                        "layout, the devices, where the guest runs, timings")
    return p


class AddDevice(argparse.Action):
    """--block, --net, --tunnet and --rng share one list, so devices keep the
    order of the command line, as lguest's did."""

    def __call__(self, parser, namespace, values, option_string=None):
        kind = {"net": "usernet"}.get(self.dest, self.dest)
        devices = list(getattr(namespace, "devices", None) or [])
        devices.append((kind, values if kind != "rng" else None))
        namespace.devices = devices


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Options and KERNEL before a lone `--`, guest arguments after it, so
    `launcher -- ARGS` gives ARGS to the bundled guest."""
    after: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, after = argv[:at], argv[at + 1:]
    args = parser.parse_args(argv)
    normalise_legacy(args)
    args.guest_args = [*args.guest_args, *after]
    return args


def normalise_legacy(args: argparse.Namespace) -> None:
    """lguest's `launcher 64 vmlinux ...`: a bare first number is the memory."""
    if args.kernel and args.kernel.isdigit() and args.guest_args:
        args.mem = args.kernel
        args.kernel = args.guest_args.pop(0)


def parse_block(spec: str) -> tuple[str, bool]:
    """FILE or FILE,ro."""
    path, _, opts = spec.partition(",")
    if opts not in ("", "ro"):
        raise UserError(f"--block {spec}: unknown option {opts!r} (only ,ro)")
    if not path:
        raise UserError("--block needs a file name")
    return path, opts == "ro"


def say(msg: str) -> None:
    if sys.stderr is None:              # started with stderr closed
        return
    try:
        print(f"launcher: {msg}", file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):
        pass                            # no usable stderr: nobody to tell


def fill_closed_standard_fds() -> bool:
    """Descriptors 0-2 closed at start-up would be handed to the first files
    we open (a disk image as "stderr"): put /dev/null there instead. True if
    stdout was closed."""
    closed = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            closed.append(fd)
    for fd in closed:
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
    return 1 in closed


class Verbose:
    """--verbose: "launcher: [0.12 s] what it does", timed from the start."""

    def __init__(self, enabled: bool, started: float) -> None:
        self.enabled, self.started = enabled, started

    def __call__(self, message: str) -> None:
        if self.enabled:
            self.always(message)

    def always(self, message: str) -> None:
        """Narration everyone sees (that the guest runs in the testbed):
        timed like --verbose's, so it is never taken for the verdict."""
        say(f"[{time.time() - self.started:.2f} s] {message}")


def kvm_ready(args: argparse.Namespace, argv: list[str], config: "GuestConfig | None" = None,
              note: Verbose | None = None, module: str = "launcher") -> int | None:
    """None when this host's KVM can run our guests; otherwise the exit
    status of re-running ``module`` with ``argv`` inside the testbed (or of
    refusing to). ``config`` says which devices need the host's side in the
    testbed (none given: none do)."""
    if note is None:
        note = Verbose(False, time.time())
    from .kvm import probe
    result = probe()
    if result.usable:
        note(f"{result.reason}: the guest runs here")
        return None
    if os.environ.get("LGUEST_IN_TESTBED") or args.no_testbed:
        say(result.reason)
        return EXIT_USAGE
    from . import testbed
    missing = testbed.available()
    if missing:
        say(f"{result.reason}, and the testbed cannot start: {missing}")
        return EXIT_USAGE
    return hand_to_testbed(result.reason, argv, config, note, module)


def hand_to_testbed(why: str, argv: list[str], config: "GuestConfig | None", note: Verbose,
                    module: str) -> int:
    """Run ``module argv`` inside the testbed VM; its exit status. Devices
    whose host side must be on this host are refused, or set up here."""
    from . import testbed
    kinds = [kind for kind, _ in config.devices_spec] if config else []
    if "tunnet" in kinds:
        raise UserError("--tunnet cannot work here: the guest would run inside the testbed "
                        "VM, and a tap made there is out of this host's reach; use --net user")
    if kinds.count("usernet") > 1:
        raise UserError("inside the testbed only one --net user card reaches this host")
    note.always(f"{why}; running inside the testbed VM instead (slow but real KVM)")
    env = {"LGUEST_STARTED": repr(note.started)}     # --timeout counts from here
    passt = None
    try:
        if "usernet" in kinds:
            # passt runs here, where the network is; the testbed VM gets a
            # network card on its socket and bridges the guest's tap to it.
            from .hostnet.passt import TESTBED_BRIDGE_ENV, Passt, parse_user_net
            spec = next(arg for kind, arg in config.devices_spec if kind == "usernet")
            passt = Passt(parse_user_net(str(spec)))
            env[TESTBED_BRIDGE_ENV] = testbed.NET_BRIDGE
            note("passt started here; the testbed VM's network card is joined to it")
        note("booting the testbed VM")
        status = testbed.run([sys.executable, "-m", module, *argv], cwd=os.getcwd(),
                             extra_env=env, net_fd=passt.sock.fileno() if passt else None)
    finally:
        if passt is not None:
            passt.stop()
    note(f"the testbed VM finished (status {status})")
    return status


def main(argv: list[str] | None = None) -> int:
    # --timeout counts from when the user ran the command; inside the testbed
    # that was the outer launcher's start, which it hands down.
    handed = os.environ.get("LGUEST_STARTED") if os.environ.get("LGUEST_IN_TESTBED") else None
    started = float(handed) if handed else time.time()
    stdout_closed = fill_closed_standard_fds()
    session = None
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_command_line(build_parser(), argv)
        if stdout_closed or sys.stdout is None:
            say("standard output is closed, so the guest's console would have nowhere to go "
                "(redirect it to /dev/null to throw the output away)")
            return EXIT_USAGE
        note = Verbose(args.verbose, started)
        config = make_config(args, started, note)
        pw = lookup_user(args.user)
        if args.chroot and not os.path.isdir(args.chroot):
            raise UserError(f"--chroot {args.chroot}: no such directory")
        session = Session(config)       # reads the images, opens the disks
        session.check()
        status = kvm_ready(args, argv, config, note)
        if status is not None:
            session.close()
            return status
        session.open_kvm()              # /dev/kvm, the Switcher, the devices' host sides
        drop_privileges(pw, args.chroot)
        with guest_owns_terminal(config.stdin), sigterm_interrupts():
            while True:
                outcome = session.boot()
                if args.stats:
                    print(session.recorder.table(), file=sys.stderr)
                if outcome.kind != "restart" or not config.reboot:
                    break
                note(f"guest rebooting: {outcome.message}")
    except UserError as exc:
        say(str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        say("interrupted")
        return EXIT_INTERRUPTED
    except KvmError as exc:
        say(f"KVM failed under the guest: {exc.strerror}")
        return EXIT_CRASH
    finally:
        if session is not None:
            session.close()
    return report(outcome, args.verbose)


def make_config(args: argparse.Namespace, started: float | None = None,
                note: Verbose | None = None) -> "GuestConfig":
    from .run import BUNDLED_GUEST, GuestConfig
    mem = parse_size(args.mem)
    if not MIN_MEM <= mem <= MAX_MEM:
        raise UserError(f"--mem {args.mem} is out of range "
                        f"({MIN_MEM >> 20}M to {MAX_MEM >> 30}G)")
    if mem % 4096:
        raise UserError(f"--mem {args.mem} is not a whole number of 4 KiB pages")
    kernel = args.kernel or BUNDLED_GUEST
    for what, path in (("kernel", kernel), ("initrd", args.initrd)):
        if path is not None and not os.path.exists(path):
            raise UserError(f"{path}: no such file (the {what})")
    if args.initrd is not None:
        check_initrd(args.initrd)
    if args.timeout is not None and not 0 < args.timeout <= threading.TIMEOUT_MAX:
        raise UserError("--timeout must be a positive number of seconds")
    cmdline = " ".join(filter(None, [args.append, *args.guest_args]))
    return GuestConfig(kernel=kernel, mem=mem, cmdline=cmdline, initrd=args.initrd,
                       reboot=not args.no_reboot, pae=args.pae, timeout=args.timeout,
                       started=started, log=note if args.verbose else None,
                       stats=args.stats, trace=args.trace, ioeventfd=args.ioeventfd,
                       fast_traps=args.fast_traps, fast_clock=args.fast_clock,
                       devices_spec=[(k, parse_block(v) if k == "block" else v)
                                     for k, v in (getattr(args, "devices", None) or [])],
                       stdin=stdin_fd())


def check_initrd(path: str) -> None:
    """The initrd's own sentence for each way it can be unusable (the
    kernel's reader would call it a kernel image)."""
    if os.path.isdir(path):
        raise UserError(f"--initrd {path} is a directory, not a ramdisk image")
    try:
        with open(path, "rb") as f:
            empty = not f.read(1)
    except OSError as exc:
        raise UserError(f"--initrd {path}: {exc.strerror}") from None
    if empty:
        raise UserError(f"--initrd {path} is empty")


def lookup_user(user: str | None):
    """The passwd entry for --user (a name or a uid), looked up before any
    chroot hides /etc/passwd."""
    if not user:
        return None
    import pwd
    try:
        return pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise UserError(f"--user {user}: no such user") from None


def drop_privileges(pw, chroot: str | None) -> None:
    """After everything is open: chroot, then give up root (lguest's
    --chroot and --username, in that order)."""
    if chroot:
        try:
            os.chroot(chroot)
            os.chdir("/")
        except OSError as exc:
            raise UserError(f"--chroot {chroot}: {exc.strerror}") from None
    if pw is not None:
        try:
            os.initgroups(pw.pw_name, pw.pw_gid)
            os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
            os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
        except PermissionError:
            raise UserError(f"--user {pw.pw_name}: only root can change user") from None


@contextmanager
def sigterm_interrupts():
    """SIGTERM stops the guest the way ^C does: a clean stop, status 130."""
    def on_term(signum, frame):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def report(outcome, verbose: bool) -> int:
    """The exit status for an outcome, with its one line on stderr."""
    if outcome.kind == "poweroff":
        if verbose:
            say("guest powered off")
        return EXIT_POWEROFF
    if outcome.kind == "restart":
        say(f"guest asked to reboot ({outcome.message})")
        return EXIT_RESTART
    if outcome.kind == "timeout":
        say(outcome.message)
        return EXIT_TIMEOUT
    if outcome.kind == "interrupted":
        say(f"stopped: {outcome.message}")
        return EXIT_INTERRUPTED
    say(f"guest {'crashed' if outcome.kind == 'crash' else 'killed'}: {outcome.message}")
    return EXIT_CRASH
