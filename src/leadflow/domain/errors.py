"""The domain's refusals: a record or command the domain will not apply."""

from __future__ import annotations

from uuid import UUID


class LeadflowError(Exception):
    """Base of the domain's errors: a record or command the domain refuses."""

    reason = "domain_error"


class UnknownLeadError(LeadflowError):
    reason = "unknown_lead"


class UnknownRepError(LeadflowError):
    reason = "unknown_rep"


class LeadMergedError(LeadflowError):
    reason = "lead_merged"


class PersonalDataError(LeadflowError):
    """A person's data cannot be handled as asked (e.g. shredding values never encrypted)."""

    reason = "personal_data"


class LeadForgottenError(LeadflowError):
    """The lead's person was erased (``leadflow forget``): nothing personal can be added."""

    reason = "lead_forgotten"


class AggregateUnloadableError(LeadflowError):
    """Stored events that cannot be turned back into an aggregate (a version gap, an
    undecodable payload): the store was damaged outside leadflow. ``verify`` reports it; the
    engine dead-letters records that need the aggregate instead of stopping."""

    reason = "lead_unloadable"

    def __init__(self, aggregate_id: UUID, kind: str, cause: BaseException) -> None:
        super().__init__(f"{kind} {aggregate_id} cannot be loaded from the store "
                         f"({type(cause).__name__}: {cause}); run `leadflow verify`")
        self.aggregate_id = aggregate_id
        self.kind = kind
        self.cause = cause
