"""The one base of the project's own errors, so that the doors map errors by kind, not by a list.

Each door catches `IcllmError` and asks it for its `kind`, which decides the gRPC status
(`grpc_api/status.py`) and the HTTP status (`ollama/app.py`). A canister's reject is not one of them:
it is the `domain.Reject` a caller gets, with its IC reject code.
"""

from __future__ import annotations

import enum


class ErrorKind(enum.StrEnum):
    """What went wrong, as the doors see it."""

    # The caller's input cannot be used; the message says what would be valid.
    INVALID = "invalid"
    # Something the caller named does not exist (a job, a canister, a cassette).
    NOT_FOUND = "not_found"
    # The request is valid but the emulator's state refuses it now (a full queue, a wrong lease).
    REFUSED = "refused"


class IcllmError(Exception):
    """An error of pytest-icllm itself, with a message written for the user who caused it."""

    kind: ErrorKind = ErrorKind.INVALID
