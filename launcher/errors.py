"""Exceptions shared across the package.

Two families matter: ``UserError`` is a mistake of the person running the
launcher (exit status 2, one sentence, no traceback) and ``GuestFault`` is a
guest that broke the rules (the Host kills it with the message).
"""
from __future__ import annotations


class UserError(Exception):
    """A problem with the command line, files or host: exit 2 with this text."""


class KvmUnavailable(UserError):
    """/dev/kvm is missing, inaccessible or cannot run lguest guests."""


class GuestFault(Exception):
    """The guest did something the Host must kill it for; str() is the reason."""


class GuestMemoryError(GuestFault):
    """A guest-supplied address or length falls outside guest memory."""

    def __init__(self, addr: int, length: int, limit: int, what: str = "") -> None:
        self.addr, self.length, self.limit = addr, length, limit
        where = f" ({what})" if what else ""
        super().__init__(
            f"guest access at {addr:#x} length {length} is beyond guest memory "
            f"({limit:#x} bytes){where}")
