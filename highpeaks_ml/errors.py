"""The one exception tree of the platform.

Domain code (training, registry, serving) raises these and never imports
grpc; ``highpeaks_ml.api.errors`` is the one place that maps them to gRPC
status codes. Messages are shown to callers, so they must name the problem
without leaking paths, tracebacks or internals.
"""

from __future__ import annotations


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
