"""The one exception tree of the platform.

Domain code (training, registry, serving) raises these and never imports
grpc; ``highpeaks_ml.api.errors`` is the one place that maps them to gRPC
status codes. Messages are shown to callers, so they must name the problem
without leaking paths, tracebacks or internals.
"""

from __future__ import annotations

#: Characters of a caller-supplied value that ``quote`` shows before cutting.
#: Names are at most 63 characters, so a name of legal length is shown whole.
QUOTE_CHARS = 64


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """A caller-supplied value (name, column, id) for an error message: its
    ``repr``, or, when longer than ``limit`` characters, the first ``limit``
    with an ellipsis and the full length: ``'aaaa…' (10240 characters)``.

    Messages echo what the caller sent so the caller can find it, but a value
    of any length must not make a message of any length (the API layer caps
    every message too, as a safety net, where a cut is less readable).
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{clip(text, limit)!r} ({len(text)} characters)"


def clip(value: object, limit: int = QUOTE_CHARS) -> str:
    """``value`` as text, cut to ``limit`` characters with an ellipsis when longer
    (for lists of caller-supplied names, where ``quote`` would be too wordy)."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + "…"


class HighPeaksError(Exception):
    """Base of every error a caller may see. The message is client-facing."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(HighPeaksError):
    """The request is malformed or its values are out of range (INVALID_ARGUMENT)."""


class NotFound(HighPeaksError):
    """An unknown model, version, alias, job or dataset (NOT_FOUND)."""


class AlreadyExists(HighPeaksError):
    """A duplicate of something that must be unique (ALREADY_EXISTS)."""


class FailedPrecondition(HighPeaksError):
    """The operation is not allowed in the current state (FAILED_PRECONDITION)."""


class Unavailable(HighPeaksError):
    """Not ready (starting, shutting down, or a model that cannot load) (UNAVAILABLE)."""


class ResourceExhausted(HighPeaksError):
    """Over a configured limit (RESOURCE_EXHAUSTED)."""


class Unauthenticated(HighPeaksError):
    """No or invalid credentials (UNAUTHENTICATED)."""


class PermissionDenied(HighPeaksError):
    """Valid credentials without the required scope (PERMISSION_DENIED)."""


class DeadlineExceeded(HighPeaksError):
    """The caller's deadline passed before the work finished (DEADLINE_EXCEEDED)."""


class Cancelled(HighPeaksError):
    """The work was cancelled (CANCELLED)."""


class Unimplemented(HighPeaksError):
    """The RPC is part of the contract but not implemented yet (UNIMPLEMENTED)."""
