"""The HTTP intake: an ASGI application (Starlette) in front of a :mod:`sink
<leadflow.intake.sinks>`.

Endpoints (see the README's Intake section for the whole contract):

- ``POST /v1/records``: contract-v1 records, one JSON object, a JSON array, or NDJSON
  (``application/x-ndjson``);
- ``POST /v1/batch``: the Segment HTTP API's batch (``{"batch": [...]}``), and
  ``POST /v1/identify|track|page`` with one Segment message;
- ``GET /healthz`` (the process answers) and ``GET /readyz`` (the sink can take records).

Every record is read by the contract every other path uses (``parse_record``,
``parse_lines``, the Segment mapping on top of it), and the answer names each record's fate
by its index: accepted, duplicate, rejected (with the reason code, the field, a detail) or
unmapped (a Segment message no rule maps). A request a client got wrong gets a 4xx with a
JSON ``{"error": {"code", "message"}}`` and writes nothing; a sink that failed gets a 503
(retry: re-sent records are duplicates by ``event_id``).
"""

from __future__ import annotations

import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import anyio.to_thread
import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leadflow.contract import DEFAULT_MAX_RECORD_BYTES, RecordRejected, parse_lines, parse_record
from leadflow.contract.segment import SegmentUnmapped, parse_message
from leadflow.contract.wire import dump_json, load_json
from leadflow.domain.rules import SegmentMapping
from leadflow.intake.auth import Tokens, presented_token
from leadflow.intake.sinks import Sink, SinkOutcome, SinkUnavailable, Submission

log = structlog.get_logger("leadflow.intake")

JSON_TYPES = frozenset({"application/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/ndjson"})
# navigator.sendBeacon (analytics.js on page unload) cannot set a JSON content type.
SEGMENT_TYPES = frozenset({"application/json", "text/plain"})
SEGMENT_CALLS = ("identify", "track", "page")


@dataclass(frozen=True)
class Limits:
    """What one request may hold. Segment's own API takes 500 KB per batch and 32 KB per
    message; the defaults take any batch a Segment SDK sends, and more."""

    max_body_bytes: int = 4 << 20
    max_records: int = 5000
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES
    max_segment_message_bytes: int = 32 << 10


@dataclass(frozen=True)
class IntakeConfig:
    sink: Sink
    mapping: SegmentMapping
    tokens: Tokens | None  # None: --no-auth
    limits: Limits = field(default_factory=Limits)
    max_future_skew: timedelta = timedelta(minutes=5)
    ready_timeout: float = 5.0
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    #: Called once per answered request with (method, route, status, seconds): the route is
    #: one of the app's paths or ``unmatched``, never the raw path (for metrics: a client
    #: must not be able to create series).
    observe: Callable[[str, str, int, float], None] | None = None
    #: Origins whose pages may post from a browser (Segment's analytics.js and the like
    #: send cross-origin requests with a preflight); ``*`` for any. None by default.
    cors_origins: tuple[str, ...] = ()


class ClientError(Exception):
    """A request the client got wrong: answered with ``status`` and nothing written."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


@dataclass
class _Entry:
    """One record of a request, from parsing to the answer."""

    index: int
    status: str = "rejected"
    reason: str | None = None
    field: str | None = None
    detail: str | None = None
    event_id: str | None = None
    line: int | None = None
    event: str | None = None
    ignored: tuple[str, ...] = ()
    submission: Submission | None = None

    def reject(self, exc: RecordRejected) -> None:
        self.status = "unmapped" if isinstance(exc, SegmentUnmapped) else "rejected"
        self.reason, self.field, self.detail = exc.reason, exc.field, exc.detail
        if isinstance(exc, SegmentUnmapped):
            self.event = exc.event

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "status": self.status}
        for name in ("line", "event_id", "event", "reason", "field", "detail"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.ignored:
            out["ignored"] = list(self.ignored)
        return out


def _error(status: int, code: str, message: str,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers=headers)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, decompressed, never holding more than ``limit`` bytes of it."""
    length = request.headers.get("content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise ClientError(413, "body_too_large", f"the body is over {limit:,} bytes")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", ""):
        raise ClientError(415, "unsupported_encoding",
                          f"Content-Encoding {encoding!r} is not supported (gzip is)")
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else None
    chunks: list[bytes] = []
    size = 0
    async for received in request.stream():
        chunk = received
        if inflate is not None:
            # Bounded inflation: a small gzip bomb never becomes a large buffer.
            try:
                chunk = inflate.decompress(received, limit + 1 - size)
            except zlib.error as exc:
                raise ClientError(400, "malformed_body", f"not gzip data: {exc}") from None
            if inflate.unconsumed_tail:
                raise ClientError(413, "body_too_large",
                                  f"the body inflates to over {limit:,} bytes")
        size += len(chunk)
        if size > limit:
            raise ClientError(413, "body_too_large", f"the body is over {limit:,} bytes")
        chunks.append(chunk)
    if inflate is not None and not inflate.eof:
        raise ClientError(400, "malformed_body", "the gzip stream is truncated")
    return b"".join(chunks)


def _load_document(body: bytes) -> Any:
    try:
        return load_json(body.removeprefix(b"\xef\xbb\xbf"))  # a BOM, as the contract
    except RecordRejected as exc:
        raise ClientError(400, "malformed_body", f"{exc.reason}: {exc.detail}") from None


class IntakeApp:
    """The request handlers over one :class:`IntakeConfig`."""

    def __init__(self, config: IntakeConfig) -> None:
        self.config = config
        # One readiness probe at a time, in a thread of its own: a probe stuck on a dead
        # broker or store can neither pile up threads nor take the ones requests need.
        self._probe = anyio.CapacityLimiter(1)

    # ------------------------------------------------------------------ helpers

    def _authorize(self, request: Request) -> None:
        tokens = self.config.tokens
        if tokens is None:
            return
        if not tokens.accepts(presented_token(request.headers.get("authorization"))):
            raise ClientError(401, "unauthorized",
                              "a valid token is needed: Authorization: Bearer TOKEN, or HTTP "
                              "Basic with the token as user name",
                              {"WWW-Authenticate": 'Bearer realm="leadflow", '
                                                   'Basic realm="leadflow"'})

    def _too_many(self, count: int) -> None:
        limit = self.config.limits.max_records
        if count > limit:
            raise ClientError(413, "too_many_records",
                              f"{count:,} records in one request; at most {limit:,}")

    async def _submit(self, entries: list[_Entry]) -> None:
        pending = [e for e in entries if e.submission is not None]
        if not pending:
            return
        submissions = [e.submission for e in pending if e.submission is not None]
        outcomes: list[SinkOutcome] = await anyio.to_thread.run_sync(
            self.config.sink.submit, submissions)
        for entry, outcome in zip(pending, outcomes, strict=True):
            entry.status = outcome.status
            if outcome.status == "rejected":
                entry.reason, entry.detail = outcome.reason, outcome.detail

    def _answer(self, request: Request, entries: list[_Entry], started: float) -> JSONResponse:
        counts = Counter(e.status for e in entries)
        reasons = Counter(e.reason for e in entries if e.status == "rejected")
        unmapped = Counter(e.event or "?" for e in entries if e.status == "unmapped")
        body: dict[str, Any] = {
            "accepted": counts["accepted"], "duplicates": counts["duplicate"],
            "rejected": counts["rejected"], "unmapped": counts["unmapped"],
            "sink": self.config.sink.mode, "results": [e.as_json() for e in entries]}
        if unmapped:
            body["unmapped_events"] = dict(sorted(unmapped.items()))
        # 422 only when nothing in the request could be taken: nothing was written then.
        status = 422 if entries and counts["rejected"] == len(entries) else 200
        log.info("intake request", path=request.url.path, status=status, records=len(entries),
                 accepted=counts["accepted"], duplicates=counts["duplicate"],
                 rejected=counts["rejected"], unmapped=counts["unmapped"],
                 reasons=dict(sorted((k or "?", v) for k, v in reasons.items())),
                 ms=round((time.perf_counter() - started) * 1000, 1))
        return JSONResponse(body, status_code=status)

    # ------------------------------------------------------------------ endpoints

    async def records(self, request: Request) -> Response:
        """Contract-v1 records: one object, an array, or NDJSON."""
        started = time.perf_counter()
        self._authorize(request)
        media = _media_type(request)
        if media not in JSON_TYPES | NDJSON_TYPES:
            raise ClientError(415, "unsupported_media_type",
                              "send application/json (an object or an array of records) or "
                              "application/x-ndjson (one record a line)")
        body = await _read_body(request, self.config.limits.max_body_bytes)
        # Parsing thousands of records is CPU work: off the event loop, so /healthz and
        # other requests are answered meanwhile.
        entries = await anyio.to_thread.run_sync(self._record_entries, media, body)
        await self._submit(entries)
        return self._answer(request, entries, started)

    def _record_entries(self, media: str, body: bytes) -> list[_Entry]:
        now = self.config.clock()
        entries: list[_Entry] = []
        if media in NDJSON_TYPES:
            lines = [(n, line) for n, line in enumerate(body.split(b"\n"), start=1)
                     if line.strip()]
            self._too_many(len(lines))
            for line_no, raw, record in parse_lines(
                    lines, now=now, max_future_skew=self.config.max_future_skew,
                    max_bytes=self.config.limits.max_record_bytes):
                entry = _Entry(len(entries), line=line_no)
                self._take(entry, raw, record)
                entries.append(entry)
        else:
            document = _load_document(body)
            if isinstance(document, dict):
                entry = _Entry(0)
                self._take(entry, body, self._parse(body, now))
                entries.append(entry)
            elif isinstance(document, list):
                self._too_many(len(document))
                for index, element in enumerate(document):
                    entry = _Entry(index)
                    if not isinstance(element, dict):
                        entry.reject(RecordRejected("schema_violation",
                                                    "a record is a JSON object"))
                    else:
                        try:
                            raw = dump_json(element)
                        except RecordRejected as exc:
                            entry.reject(exc)
                        else:
                            self._take(entry, raw, self._parse(raw, now))
                    entries.append(entry)
            else:
                raise ClientError(400, "malformed_body",
                                  "the body is a record (a JSON object) or an array of them")
        if not entries:
            raise ClientError(400, "no_records", "the body holds no records")
        return entries

    def _parse(self, raw: bytes, now: datetime) -> Any:
        try:
            return parse_record(raw, now=now, max_future_skew=self.config.max_future_skew,
                                max_bytes=self.config.limits.max_record_bytes)
        except RecordRejected as exc:
            return exc

    @staticmethod
    def _take(entry: _Entry, raw: bytes, parsed: Any) -> None:
        if isinstance(parsed, RecordRejected):
            entry.reject(parsed)
            return
        entry.event_id = parsed.event_id
        entry.submission = Submission(parsed, raw)

    async def batch(self, request: Request) -> Response:
        """The Segment HTTP API batch: ``{"batch": [message, ...], "context": {...}}``."""
        started = time.perf_counter()
        self._authorize(request)
        document = await self._segment_document(request)
        if not isinstance(document, dict) or not isinstance(document.get("batch"), list):
            raise ClientError(400, "malformed_body",
                              'a Segment batch is {"batch": [message, ...]}')
        messages: list[Any] = document["batch"]
        if not messages:
            raise ClientError(400, "no_records", "the batch holds no messages")
        self._too_many(len(messages))
        shared = document.get("context")
        entries = await anyio.to_thread.run_sync(
            self._segment_entries, messages, shared if isinstance(shared, dict) else None)
        await self._submit(entries)
        return self._answer(request, entries, started)

    async def single(self, request: Request) -> Response:
        """One Segment message at ``/v1/identify``, ``/v1/track`` or ``/v1/page``."""
        started = time.perf_counter()
        self._authorize(request)
        document = await self._segment_document(request)
        if not isinstance(document, dict):
            raise ClientError(400, "malformed_body", "a Segment message is a JSON object")
        call = request.url.path.rsplit("/", 1)[-1]
        entries = self._segment_entries([{**document, "type": document.get("type", call)}],
                                        None)
        await self._submit(entries)
        return self._answer(request, entries, started)

    async def _segment_document(self, request: Request) -> Any:
        if _media_type(request) not in SEGMENT_TYPES:
            raise ClientError(415, "unsupported_media_type",
                              "send the Segment batch as application/json")
        body = await _read_body(request, self.config.limits.max_body_bytes)
        return await anyio.to_thread.run_sync(_load_document, body)

    def _segment_entries(self, messages: Sequence[Any],
                         shared_context: dict[str, Any] | None) -> list[_Entry]:
        now = self.config.clock()
        limits = self.config.limits
        entries = []
        for index, sent in enumerate(messages):
            entry = _Entry(index)
            entries.append(entry)
            message = sent
            if shared_context and isinstance(sent, dict):
                # The batch's context is merged into each message's; the message's wins.
                own = sent.get("context")
                if own is None or isinstance(own, dict):
                    message = {**sent, "context": {**shared_context, **(own or {})}}
            try:
                if len(dump_json(message)) > limits.max_segment_message_bytes:
                    raise RecordRejected("record_too_large",
                                         f"a Segment message is at most "
                                         f"{limits.max_segment_message_bytes:,} bytes")
                mapped = parse_message(message, self.config.mapping, received_at=now, now=now,
                                       max_future_skew=self.config.max_future_skew,
                                       max_bytes=limits.max_record_bytes)
            except RecordRejected as exc:
                entry.reject(exc)
                continue
            entry.event_id = mapped.record.event_id
            entry.ignored = mapped.ignored
            entry.submission = Submission(mapped.record, mapped.raw)
        return entries

    async def healthz(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, _request: Request) -> Response:
        sink = self.config.sink
        why: str | None
        try:
            with anyio.fail_after(self.config.ready_timeout):
                why = await anyio.to_thread.run_sync(sink.ready, abandon_on_cancel=True,
                                                     limiter=self._probe)
        except TimeoutError:
            why = f"the {sink.mode} sink did not answer within {self.config.ready_timeout:g}s"
        if why is not None:
            return JSONResponse({"status": "unavailable", "sink": sink.mode, "reason": why},
                                status_code=503)
        return JSONResponse({"status": "ready", "sink": sink.mode})


async def _client_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClientError)
    log.info("intake request refused", path=request.url.path, status=exc.status,
             code=exc.code)
    return _error(exc.status, exc.code, exc.message, exc.headers)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error(exc.status_code, code, str(exc.detail), dict(exc.headers or {}))


async def _unavailable(_request: Request, exc: Exception) -> Response:
    return _error(503, "unavailable", f"{exc}; retry the request (records already taken are "
                  "recognised as duplicates by event_id)", {"Retry-After": "5"})


async def _internal(request: Request, exc: Exception) -> Response:
    # A bug, never the client's input: logged with its class, answered without a traceback.
    log.error("intake request failed", path=request.url.path,
              error_class=type(exc).__name__, error=str(exc)[:300])
    return _error(500, "internal_error", "the intake failed; see its log")


class _Observed:
    """ASGI middleware: every answered request to ``observe`` (see :class:`IntakeConfig`)."""

    def __init__(self, app: ASGIApp, observe: Callable[[str, str, int, float], None],
                 routes: frozenset[str]) -> None:
        self.app = app
        self.observe = observe
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts: an error answered outside this middleware

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope.get("path", "")
            self.observe(scope.get("method", "?"), path if path in self.routes else "unmatched",
                         status, time.perf_counter() - started)


def create_app(config: IntakeConfig) -> Starlette:
    """The ASGI application for ``config``."""
    intake = IntakeApp(config)
    routes = [
        Route("/v1/records", intake.records, methods=["POST"]),
        Route("/v1/batch", intake.batch, methods=["POST"]),
        *(Route(f"/v1/{call}", intake.single, methods=["POST"]) for call in SEGMENT_CALLS),
        Route("/healthz", intake.healthz, methods=["GET"]),
        Route("/readyz", intake.readyz, methods=["GET"]),
    ]
    middleware = [] if config.observe is None else [
        Middleware(_Observed, observe=config.observe,
                   routes=frozenset(route.path for route in routes))]
    if config.cors_origins:
        # Preflights are answered before authentication (browsers send them without
        # credentials); the requests that follow still need a token.
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["POST"],
            allow_headers=["Authorization", "Content-Type", "Content-Encoding"], max_age=600))
    return Starlette(routes=routes, middleware=middleware, exception_handlers={
        ClientError: _client_error, HTTPException: _http_error,
        SinkUnavailable: _unavailable, Exception: _internal})
