"""The one base of the project's own errors, so that the doors map errors by kind, not by a list.

Each door catches `IcllmError` and asks it for its `kind`; the kind decides the IC reject code, the
gRPC status and the HTTP status in one place (`grpc_api/status.py`, `ollama/app.py`).
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
