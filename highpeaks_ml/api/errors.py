"""The one place that maps the domain exception tree to gRPC status codes."""

from __future__ import annotations

import grpc

from highpeaks_ml import errors

_CODES: list[tuple[type[errors.HighPeaksError], grpc.StatusCode]] = [
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Cancelled, grpc.StatusCode.CANCELLED),
    (errors.Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
]

INTERNAL_MESSAGE = "internal error; see the server log for this request id"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message for an exception.

    Domain errors keep their message; NotImplementedError (raised by the
    generated servicer bases) is UNIMPLEMENTED; anything else is INTERNAL with
    a generic message, so no path or traceback ever reaches a caller.
    """
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code, exc.message  # type: ignore[attr-defined]
    if isinstance(exc, errors.HighPeaksError):
        return grpc.StatusCode.INTERNAL, exc.message
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED, "method not implemented"
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
