"""Per-RPC context the API layer sets and servicers read: who is calling.

The authentication interceptor puts the caller's subject (the JWT ``sub``
claim) in a contextvar for the duration of the RPC; servicers record it as
``created_by`` on the jobs and versions a call creates, and the RPC log line
carries it. Kept free of grpc imports so any layer may read it.
"""

from __future__ import annotations

import contextvars

#: The subject when auth is off (``auth_mode=off``).
ANONYMOUS = "anonymous"

#: The subject before authentication ran (health, reflection, refused calls).
NO_SUBJECT = "-"

subject_var: contextvars.ContextVar[str] = contextvars.ContextVar("subject", default=NO_SUBJECT)


def current_subject() -> str:
    """The authenticated caller of the current RPC.

    ``sub`` of the caller's token when ``auth_mode=jwt``, ``"anonymous"`` when
    auth is off, ``"-"`` outside an RPC.
    """
    return subject_var.get()


__all__ = ["ANONYMOUS", "NO_SUBJECT", "current_subject", "subject_var"]
