"""The client of a vdata service: :class:`Client` (submit, stream, fetch, stage) and the
event-service worker loop (:meth:`Client.run_worker`)."""

from vdata.client.client import Client, LeasedRange, RecipeInfo, WorkerSummary
from vdata.errors import ChecksumMismatch, ServiceError, ServiceUnreachable

__all__ = ["ChecksumMismatch", "Client", "LeasedRange", "RecipeInfo", "ServiceError", "ServiceUnreachable", "WorkerSummary"]
