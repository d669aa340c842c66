"""cairn: a Python client for the cairn orchestrator.

- `OrchestrationController`: the prototype's API (register, execute with your executor,
  pause, resume, cancel, rollback, interventions, checkpoints, snapshots, callbacks), async.
- `AsyncClient` and `Client`: every route of the HTTP API (events by SSE), typed.
- `Worker`: a remote worker serving agent types with a Python function.
"""

from .client import AsyncClient, Client
from .controller import (
    Checkpoint,
    Intervention,
    InterventionType,
    OrchestrationController,
    OrchestrationState,
    PlanSnapshot,
)
from .errors import (
    ApiError,
    AuthenticationError,
    BadRequestError,
    CairnError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    StepFailed,
    TransportError,
    UnavailableError,
    UnprocessableError,
)
from .types import TERMINAL_STATES, Page, PlannedCompensation, RollbackAnswer
from .worker import StepResult, Worker

__version__ = "0.1.0"

__all__ = [
    "AsyncClient",
    "Client",
    "OrchestrationController",
    "OrchestrationState",
    "InterventionType",
    "Checkpoint",
    "Intervention",
    "PlanSnapshot",
    "Worker",
    "StepResult",
    "StepFailed",
    "Page",
    "RollbackAnswer",
    "PlannedCompensation",
    "TERMINAL_STATES",
    "CairnError",
    "ApiError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "ConflictError",
    "UnprocessableError",
    "RateLimitedError",
    "UnavailableError",
    "TransportError",
    "__version__",
]
