"""How a request ends and why a call is refused: two enums every layer shares (no grpc, no torch, no numpy here).

`Outcome` is a request's status at the end of a run, the `status` of its record (`superserve.records`), the outcome
label of the server's metrics and the simulator's result; its values are the strings the record files and metrics
have always carried ("ok", "late", ...), and a `StrEnum` member compares equal to its string, so files written before
and code comparing with strings keep working.

`Reason` is why a call was answered without a result. The engines raise `Refused(reason, message)` (or answer a
failed `Outcome`, mapped by `reason_of_outcome`); only the doors turn a reason into a status (the gRPC servicer's
`GRPC_STATUS` in `server/calls.py`, the HTTP door's `HTTP_STATUS`), so the scheduling code never knows a wire protocol.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.StrEnum):
    OK = "ok"  # served, finished by its deadline
    LATE = "late"  # served, finished after its deadline
    SHED = "shed"  # accepted, then dropped because no choice could meet its deadline
    REJECTED = "rejected"  # never queued (queue full, invalid input, accuracy hint no subnet meets)
    ERROR = "error"  # dispatched, but the worker failed it
    CANCELLED = "cancelled"  # withdrawn because the client cancelled the call or its gRPC deadline passed
    UNAVAILABLE = "unavailable"  # not served because capacity was lost (a dead worker, Redis gone); may be retried

    @property
    def served(self) -> bool:
        return self is Outcome.OK or self is Outcome.LATE


class Reason(enum.StrEnum):
    NOT_FOUND = "not_found"  # unknown model or version
    INVALID = "invalid"  # malformed tensor, parameter or body; an accuracy hint no subnet meets
    TOO_LARGE = "too_large"  # the message or body is over the size limit
    BUSY = "busy"  # queue full, rate limited, in-flight cap, too many large inputs being decoded
    DEADLINE = "deadline"  # shed: no subnet can meet the deadline
    UNAVAILABLE = "unavailable"  # shutting down, or the capacity that held the call was lost
    CANCELLED = "cancelled"  # the client went away
    UNAUTHENTICATED = "unauthenticated"
    INTERNAL = "internal"


@dataclass(frozen=True)
class Refusal:
    reason: Reason
    message: str  # for the client: says what was wrong


class Refused(Exception):
    """A call answered with `refusal` instead of a result (nothing of it is queued)."""

    def __init__(self, reason: Reason | str, message: str) -> None:
        super().__init__(message)
        self.refusal = Refusal(Reason(reason), message)

    @property
    def reason(self) -> Reason:
        return self.refusal.reason

    @property
    def message(self) -> str:
        return self.refusal.message


# A failed call's outcome -> why it was refused. UNAVAILABLE: the capacity that held the call was lost (a worker
# process died, Redis is gone or stalled); REJECTED: refused after submission (a Redis queue found full).
_REASON_OF_OUTCOME = {Outcome.SHED: Reason.DEADLINE, Outcome.UNAVAILABLE: Reason.UNAVAILABLE,
                      Outcome.REJECTED: Reason.BUSY, Outcome.CANCELLED: Reason.CANCELLED}


def reason_of_outcome(outcome: Outcome | str) -> Reason:
    """The refusal reason of a failed call's outcome (a worker error, or anything unknown, is INTERNAL)."""
    return _REASON_OF_OUTCOME.get(outcome, Reason.INTERNAL)  # type: ignore[call-overload]
