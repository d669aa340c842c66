"""What the sync and async clients share: requests as values, their retry rule, answers decoded.

Every endpoint is a function that builds a `Req` (method, path, query, body, how to decode the
answer); `Client` and `AsyncClient` send it. So the two clients cannot drift apart.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Generic, Iterator, List, Optional, TypeVar
from urllib.parse import quote

import httpx

from .errors import ApiError, api_error
from .types import Event, Page

T = TypeVar("T")

#: Answers worth asking again for a read: the server (or a proxy in front) was briefly unable.
RETRY_STATUSES = frozenset({429, 502, 503, 504})

#: Transport errors raised before any byte of the request left: safe to retry for any method.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

def seg(value: str) -> str:
    """One path segment, percent-encoded."""
    return quote(str(value), safe="")


def _json(resp: httpx.Response) -> Any:
    if resp.status_code == 204 or not resp.content:
        return None
    return resp.json()


def _page(resp: httpx.Response) -> Page[Any]:
    body = resp.json()
    return Page(items=list(body.get("items") or []), next_cursor=body.get("next_cursor"), raw=body)


def _text(resp: httpx.Response) -> str:
    return resp.text


@dataclass
class Req(Generic[T]):
    """One request to send and how to read its answer."""

    method: str
    path: str
    decode: Callable[[httpx.Response], T]
    params: Optional[Dict[str, Any]] = None
    body: Any = None
    has_body: bool = False
    headers: Dict[str, str] = field(default_factory=dict)
    #: A per-request timeout (seconds) added to the client's, for long polls.
    extra_timeout: float = 0.0
    #: Answers (besides 2xx) that are not errors, e.g. 204 of a poll.
    ok_statuses: FrozenSet[int] = frozenset()

    @property
    def safe_to_resend(self) -> bool:
        """A GET may be sent again after the connection broke mid-request; nothing else may."""
        return self.method in ("GET", "HEAD")

    def query(self) -> Optional[Dict[str, Any]]:
        if not self.params:
            return None
        out: Dict[str, Any] = {}
        for k, v in self.params.items():
            if v is None:
                continue
            out[k] = ("true" if v else "false") if isinstance(v, bool) else v
        return out or None


def get(path: str, decode: Callable[[httpx.Response], T], **params: Any) -> Req[T]:
    return Req("GET", path, decode, params=params or None)


def post(path: str, decode: Callable[[httpx.Response], T], body: Any = None) -> Req[T]:
    """A POST with a JSON body (`{}` when there is nothing to say: the server wants JSON)."""
    return Req("POST", path, decode, body={} if body is None else body, has_body=True)


def delete(path: str) -> Req[None]:
    return Req("DELETE", path, _json)


def compact(**fields: Any) -> Dict[str, Any]:
    """A JSON body of the fields that are not None."""
    return {k: v for k, v in fields.items() if v is not None}


def check(resp: httpx.Response, req: Req[Any]) -> None:
    """Raises the server's error for an answer that is not a success."""
    if resp.is_success or resp.status_code in req.ok_statuses:
        return
    try:
        body = resp.json()
    except ValueError:
        body = None
    raise api_error(resp.status_code, body, resp.text, method=req.method, path=req.path)


def backoff(attempt: int, base: float, cap: float = 5.0) -> float:
    """Exponential backoff with jitter: base·2^attempt, at most `cap` seconds."""
    delay: float = min(cap, base * (2**attempt))
    return delay * (0.5 + random.random() / 2)


def should_retry(req: Req[Any], exc: Optional[BaseException], status: Optional[int]) -> bool:
    """Retries only where it is safe: a request that never left, or a read."""
    if exc is not None:
        if isinstance(exc, NOT_SENT):
            return True
        return req.safe_to_resend and isinstance(exc, httpx.TransportError)
    return req.safe_to_resend and status in RETRY_STATUSES


def headers(token: Optional[str], user_agent: str) -> Dict[str, str]:
    h = {"Accept": "application/json", "User-Agent": user_agent}
    if token:
        h["Authorization"] = f"Bearer {token}"
    return h


class SseParser:
    """Reads `text/event-stream` lines into frames (id, event, data); comments are skipped."""

    def __init__(self) -> None:
        self._id: Optional[str] = None
        self._event: Optional[str] = None
        self._data: List[str] = []

    def feed(self, line: str) -> Optional[Dict[str, Optional[str]]]:
        """One line (without its end); a frame when this line ended one."""
        if line == "":
            if not self._data and self._event is None and self._id is None:
                return None
            frame = {"id": self._id, "event": self._event, "data": "\n".join(self._data)}
            self._id, self._event, self._data = None, None, []
            return frame
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None


def decode_frame(frame: Dict[str, Optional[str]]) -> Optional[Event]:
    """The event of a frame; None for a frame that carries none (`lagged`)."""
    if frame.get("event") == "lagged" or not frame.get("data"):
        return None
    event: Event = json.loads(frame["data"] or "null")
    return event


def stream_request(
    plan_id: Optional[str], after: Optional[int], follow: bool, last_id: Optional[int]
) -> Req[None]:
    path = "/v1/events/stream" if plan_id is None else f"/v1/plans/{seg(plan_id)}/events/stream"
    params: Dict[str, Any] = {}
    if follow and plan_id is not None:
        params["follow"] = True
    req: Req[None] = Req("GET", path, lambda r: None, params=params or None)
    resume = last_id if last_id is not None else after
    if resume is not None:
        req.headers["Last-Event-ID"] = str(resume)
    req.headers["Accept"] = "text/event-stream"
    return req


def frames(lines: Iterator[str]) -> Iterator[Dict[str, Optional[str]]]:
    parser = SseParser()
    for line in lines:
        frame = parser.feed(line)
        if frame is not None:
            yield frame


__all__ = [
    "ApiError",
    "Req",
    "get",
    "post",
    "delete",
    "compact",
    "seg",
    "_json",
    "_page",
    "_text",
]
