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
from ._hooks import RequestHooks
from ._models import (
    DubbingOutcome,
    DubbingResult,
    DurationHint,
    Language,
    StatusResult,
    TaskKind,
    TaskStatus,
    TranscriptionResult,
    TranscriptSegment,
    TranslationResult,
    TTSResult,
    ValidationDetail,
)
from ._version import __version__
from .polling._adaptive import AdaptivePollPolicy
from .polling._handle import TaskHandle
from .polling._policy import PollPolicy
from .polling._results import gather_results
from .polling._stats import CompletionStats
from .polling._stream import StatusIterator, gather_statuses, iter_statuses
from .resources._base import TaskResource
from .resources._dub import DubResource
from .resources._transcription import TranscriptionResource
from .resources._translation import TranslationResource
from .resources._tts import TTSResource

# Sorted (plain code-point order) and pinned by tests/test_public_api.py.
__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AdaptivePollPolicy",
    "AsyncCambClient",
    "AuthenticationError",
    "Budget",
    "CambError",
    "ClientClosedError",
    "CompletionStats",
    "DubResource",
    "DubbingOutcome",
    "DubbingResult",
    "DurationHint",
    "InternalServerError",
    "Language",
    "NotFoundError",
    "PollPolicy",
    "RateBudget",
    "RateLimitError",
    "RequestHooks",
    "StatusIterator",
    "StatusResult",
    "TTSResource",
    "TTSResult",
    "TaskFailedError",
    "TaskHandle",
    "TaskKind",
    "TaskResource",
    "TaskStatus",
    "TranscriptSegment",
    "TranscriptionResource",
    "TranscriptionResult",
    "TranslationResource",
    "TranslationResult",
    "UnprocessableEntityError",
    "ValidationDetail",
    "WaitTimeoutError",
    "__version__",
    "gather_results",
    "gather_statuses",
    "iter_statuses",
]
