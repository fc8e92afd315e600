"""The whole Spear exception tree.

Every class a caller can act on has a stable wire ``code``. A daemon sends an
``ErrorReply`` carrying that code; the client rebuilds the same class with
:func:`from_code`, so ``except spear.errors.NotFound`` works across the wire.
"""

from __future__ import annotations


class SpearError(Exception):
    """Base of every error Spear raises on purpose."""

    code = "INTERNAL"

    def __init__(self, message: str = "", *, details: dict | None = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code)
        self.details = details or {}

    def __str__(self) -> str:  # pragma: no cover - trivial
        return f"{self.code}: {self.message}"


class NotFound(SpearError):
    """The named node, function or execution does not exist."""

    code = "NOT_FOUND"


class InvalidArgument(SpearError):
    """The request or one of its fields is malformed or out of range."""

    code = "INVALID_ARGUMENT"


class Unauthenticated(SpearError):
    """The caller could not be identified."""

    code = "UNAUTHENTICATED"


class PermissionDenied(SpearError):
    """The caller is known but its role does not allow the operation."""

    code = "PERMISSION_DENIED"


class ResourceExhausted(SpearError):
    """A limit was hit: memory, fuel, concurrency, capacity, queue size."""

    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(SpearError):
    """The operation did not finish within its timeout."""

    code = "DEADLINE_EXCEEDED"


class Unavailable(SpearError):
    """The service or runtime cannot be reached or is not offered here."""

    code = "UNAVAILABLE"


class Internal(SpearError):
    """A bug or an unexpected failure inside Spear."""

    code = "INTERNAL"


class FunctionError(SpearError):
    """The user's function itself failed (exception, trap, non-zero exit)."""

    code = "FUNCTION_ERROR"


class Cancelled(SpearError):
    """The execution was cancelled before it finished."""

    code = "CANCELLED"


class ProtocolError(InvalidArgument):
    """A frame could not be decoded (wrong version, truncated, too big, bad types)."""


class ConfigError(InvalidArgument):
    """The configuration is invalid; the message names the source, key and value."""


class StoreError(Unavailable):
    """A store cannot be opened safely (missing files, corruption); the message
    names the file, the problem and the command that repairs it."""


_BY_CODE: dict[str, type[SpearError]] = {
    cls.code: cls
    for cls in (
        NotFound,
        InvalidArgument,
        Unauthenticated,
        PermissionDenied,
        ResourceExhausted,
        DeadlineExceeded,
        Unavailable,
        Internal,
        FunctionError,
        Cancelled,
    )
}

CODES = tuple(_BY_CODE)


def from_code(code: str, message: str, details: dict | None = None) -> SpearError:
    """Rebuild the exception class that matches a wire error code."""
    cls = _BY_CODE.get(code, Internal)
    return cls(message, details=details)
