"""The one place that maps the domain exception tree to gRPC status codes.

Every message a caller receives about a failure passes through
``status_for``: the status details of every RPC of both front doors (through
``api/interceptors.py``) and the in-stream errors of PredictStream and
ModelStreamInfer (``api/converters``). It caps each message at
``MAX_MESSAGE_BYTES`` of UTF-8, so no caller input echoed in a message can
make the status larger than grpc clients accept as metadata (they refuse
oversized metadata with RESOURCE_EXHAUSTED, hiding the real error). Domain
code cuts the caller-supplied pieces it quotes itself
(``highpeaks_ml.errors.quote``); the cap here is the safety net.
"""

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

#: The most bytes (UTF-8) of any message sent to a caller about a failure.
#: grpc sends status details as percent-encoded metadata (up to three bytes per
#: byte) and clients refuse metadata over 8 KiB by default; 512 bytes keeps a
#: status far below that and is room enough for any message of ours.
MAX_MESSAGE_BYTES = 512
_ELLIPSIS = "…"


def bounded(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """``message`` cut to at most ``limit`` bytes of UTF-8, ending with an ellipsis
    when cut; the cut falls on a character boundary."""
    # "replace": a lone surrogate (which grpc could not send at all) becomes "?".
    data = message.encode("utf-8", "replace")
    if len(data) <= limit:
        return data.decode("utf-8")
    room = max(0, limit - len(_ELLIPSIS.encode()))
    # "ignore" drops the partial character a byte cut may leave at the end.
    return data[:room].decode("utf-8", "ignore") + _ELLIPSIS


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and client-facing message for an exception.

    Domain errors keep their message (bounded, see ``bounded``);
    NotImplementedError (raised by the generated servicer bases) is
    UNIMPLEMENTED; anything else is INTERNAL with a generic message, so no
    path or traceback ever reaches a caller.
    """
    for kind, code in _CODES:
        if isinstance(exc, kind):
            return code, bounded(exc.message)  # type: ignore[attr-defined]
    if isinstance(exc, errors.HighPeaksError):
        return grpc.StatusCode.INTERNAL, bounded(exc.message)
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED, "method not implemented"
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
