"""camb-async: an asyncio/trio-native client for the CAMB.AI task API.

Poll hundreds to hundreds of thousands of dubbing, text-to-speech, translation and
transcription tasks under one rate budget. See README.md for the tour.
"""

from ._budget import Budget, RateBudget
from ._client import AsyncCambClient
from ._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    CambError,
    ClientClosedError,
    InternalServerError,
    NotFoundError,
    RateLimitError,
    TaskFailedError,
    UnprocessableEntityError,
    WaitTimeoutError,
)
from ._handle import TaskHandle
from ._hooks import RequestHooks
from ._models import StatusResult, TaskKind, TaskStatus, ValidationDetail
from ._polling import PollPolicy, gather_statuses, iter_statuses
from ._resources import TaskResource
from ._version import __version__

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AsyncCambClient",
    "AuthenticationError",
    "Budget",
    "CambError",
    "ClientClosedError",
    "InternalServerError",
    "NotFoundError",
    "PollPolicy",
    "RateBudget",
    "RateLimitError",
    "RequestHooks",
    "StatusResult",
    "TaskFailedError",
    "TaskHandle",
    "TaskKind",
    "TaskResource",
    "TaskStatus",
    "UnprocessableEntityError",
    "ValidationDetail",
    "WaitTimeoutError",
    "__version__",
    "gather_statuses",
    "iter_statuses",
]
