"""A local OpenAI-compatible chat server that answers from a script, with latency and faults on demand.

Tests and benchmarks point litellm at ``FakeLLMServer.base_url`` so the real HTTP path
(connection pooling, retries, timeouts, response parsing) runs without a network or a model,
and every request is logged so tests can assert what reached the "model" and count calls
(a structured-output ``response_format`` included: a malformed one is refused with 400, as
OpenAI does). Scripted ``Reply`` objects serve per-token logprobs.
It only ever binds 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

FAULT_KINDS = ("status", "reset", "hang", "not_json", "empty_choices")


@dataclass
class Reply:
    """A scripted assistant message, for when a bare string is not enough (logprobs, null content, truncation).

    ``logprobs`` holds, per generated token, the top alternatives as (token, logprob); the first
    entry is the chosen token. Without it a logprobs request gets the whole content as one sure token.
    """

    content: str | None
    logprobs: list[list[tuple[str, float]]] | None = None
    finish_reason: str = "stop"


@dataclass
class Fault:
    """A scripted provider failure, so tests can check how the client copes with it.

    status: HTTP ``status`` with a JSON error body (plus Retry-After if ``retry_after`` is set), whose message
    is ``message`` when given (a provider's own words, e.g. OpenAI's for a wrong key);
    reset: the TCP connection is aborted (RST) without a response;
    hang: sleep ``seconds``, then answer normally (to trigger client timeouts);
    not_json: 200 whose body is not JSON; empty_choices: 200 with ``"choices": []``.
    """

    kind: str
    status: int = 500
    retry_after: float | None = None
    seconds: float = 5.0
    message: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}, expected one of {FAULT_KINDS}")


Responder = Callable[[dict], str | Reply | Fault]


def _route(path: str) -> str:
    """Normalise a request path so routes work with or without the /v1 prefix."""
    return path.split("?", 1)[0].removeprefix("/v1")


def _tokens(text: str) -> int:
    """Rough token count (about four characters per token), enough for usage accounting tests."""
    return -(-len(text) // 4)


def _error(message: str, kind: str, code: int) -> dict:
    """OpenAI-style error body, so clients map it like a real provider error."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _logprob_content(reply: Reply, top_n: int) -> list[dict]:
    """OpenAI ``logprobs.content``; like the real API, only ``top_n`` (the request's top_logprobs) alternatives."""
    tokens = reply.logprobs
    if tokens is None:
        tokens = [[(reply.content, 0.0)]] if reply.content else []
    return [
        {
            "token": alternatives[0][0],
            "logprob": alternatives[0][1],
            "bytes": None,
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": None} for t, lp in alternatives[:top_n]],
        }
        for alternatives in tokens
    ]


class _Handler(BaseHTTPRequestHandler):
    """Routes one connection's requests; keep-alive via HTTP/1.1 and Content-Length on every response."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes; avoid delayed-ACK stalls
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection)

    def finish(self) -> None:
        self.server.fake._untrack(self.connection)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:
        """Stay silent; tests read ``FakeLLMServer.requests`` instead of stderr."""

    def do_GET(self) -> None:
        self._serve(b"")

    def do_POST(self) -> None:
        self._serve(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def _serve(self, raw: bytes) -> None:
        fake = self.server.fake
        text = raw.decode("utf-8", "replace")
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        route = _route(self.path)
        is_chat = self.command == "POST" and route == "/chat/completions"
        headers = {key.lower(): value for key, value in self.headers.items()}
        fault = fake._arrive({"body": body, "headers": headers, "path": self.path}, is_chat)
        try:
            if fake._stopping.wait(fake.latency):
                self.close_connection = True
            elif is_chat:
                self._chat(body, fault)
            elif self.command == "GET" and route == "/models":
                model = {"id": "fake", "object": "model", "created": 0, "owned_by": "fake-llm"}
                self._send_json(200, {"object": "list", "data": [model]})
            else:
                self._send_json(404, _error(f"no route for {self.command} {self.path}", "not_found", 404))
        finally:
            fake._depart()

    def _chat(self, body: object, fault: Fault | None) -> None:
        """Queued fault first, else ask the responder once per choice (n); after a hang, ask again."""
        fake = self.server.fake
        if not isinstance(body, dict):
            self._send_json(400, _error("request body must be a JSON object", "invalid_request_error", 400))
            return
        problem = response_format_problem(body.get("response_format"))
        if problem is not None:  # refused before any answer, as OpenAI refuses a malformed structured-output request
            self._send_json(400, _error(problem, "invalid_request_error", 400))
            return
        while True:
            if fault is None:
                try:
                    answers = [fake.responder(body) for _ in range(int(body.get("n") or 1) if fake.serve_n else 1)]
                except Exception as exc:  # surface test-script bugs as a readable 500, not a dropped connection
                    self._send_json(500, _error(f"responder raised {exc!r}", "responder_error", 500))
                    return
                fault = next((a for a in answers if isinstance(a, Fault)), None)
                if fault is None:
                    replies = [a if isinstance(a, Reply) else Reply(a) for a in answers]
                    self._send_json(200, fake._completion(body, replies))
                    return
            if fault.kind != "hang":
                self._fail(fault, body)
                return
            if fake._stopping.wait(fault.seconds):
                self.close_connection = True
                return
            fault = None

    def _fail(self, fault: Fault, body: dict) -> None:
        if fault.kind == "status":
            error = _error(fault.message or f"scripted fault: HTTP {fault.status}", "fake_fault", fault.status)
            extra = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
            self._send_json(fault.status, error, extra)
        elif fault.kind == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.rfile.close()  # drop the reader's reference, or close() would not really close (and RST)
            self.connection.close()
            self.close_connection = True
        elif fault.kind == "not_json":
            self._send(200, b"<html>upstream proxy error</html>")
        else:  # empty_choices
            self._send_json(200, self.server.fake._completion(body, []))

    def _send_json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)


def response_format_problem(response_format: object) -> str | None:
    """What OpenAI would refuse in a ``response_format`` (None when absent or well-formed): a json_schema
    request needs a name of letters, digits, "_" or "-", and a schema; a strict one needs every object to
    list all its properties as required and to forbid additional ones."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict) or response_format.get("type") not in ("text", "json_object", "json_schema"):
        return f"Invalid value for 'response_format': {response_format!r}"
    if response_format["type"] != "json_schema":
        return None
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", spec["name"]):
        return "Missing or invalid 'response_format.json_schema.name'"
    schema = spec.get("schema")
    if not isinstance(schema, dict):
        return "Invalid 'response_format.json_schema.schema': expected an object"
    if spec.get("strict"):
        for node in _objects(schema):
            properties = node.get("properties") or {}
            if node.get("additionalProperties") is not False:
                return "Invalid schema: 'additionalProperties' is required to be supplied and to be false"
            if sorted(node.get("required") or []) != sorted(properties):
                return "Invalid schema: 'required' is required to be supplied and to be an array including every key in properties"
    return None


def _objects(schema: dict) -> list[dict]:
    found = [schema] if schema.get("type") == "object" else []
    for sub in (schema.get("properties") or {}).values():
        if isinstance(sub, dict):
            found += _objects(sub)
    return found


class _HTTPServer(ThreadingHTTPServer):
    """One daemon thread per connection, so latency sleeps overlap like a real provider's."""

    daemon_threads = True
    block_on_close = False  # stop() must not wait on threads parked on idle keep-alive sockets
    allow_reuse_address = True
    request_queue_size = 256  # benchmarks open dozens of connections at once

    def __init__(self, fake: FakeLLMServer) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients dropping connections (timeouts, pool closes) is normal here; only real bugs get a traceback."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class FakeLLMServer:
    """OpenAI-compatible chat server on 127.0.0.1 answering from ``responder``, with latency and queued faults."""

    def __init__(self, responder: Responder | None = None, *, latency: float = 0.0) -> None:
        self.responder: Responder = responder or (lambda body: "3")
        self.latency = latency
        self.serve_logprobs = True  # False: logprobs asked for are not returned, as several providers do
        self.serve_n = True  # False: one choice whatever n asks for, as some OpenAI-compatible servers do
        self.base_url = ""
        self.requests: list[dict] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._connections: set[socket.socket] = set()
        self._in_flight = 0
        self._max_in_flight = 0
        self._ids = itertools.count(1)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> FakeLLMServer:
        self._stopping.clear()
        self._httpd = _HTTPServer(self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-llm", daemon=True
        )
        self._thread.start()
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        return self

    def stop(self) -> None:
        """Stop promptly: wake sleeping handlers and cut pooled connections so nothing is answered after stop."""
        if self._httpd is None or self._thread is None:
            return
        with self._lock:
            self._stopping.set()
            connections = list(self._connections)
        self._httpd.shutdown()
        self._httpd.server_close()
        for connection in connections:
            _shutdown(connection)
        self._thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def chat_requests(self) -> list[dict]:
        """Bodies of chat completion requests only, in arrival order."""
        with self._lock:
            return [r["body"] for r in self.requests if _route(r["path"]) == "/chat/completions"]

    def reset(self) -> None:
        """Forget logged requests and queued faults (and the in-flight peak) between test phases."""
        with self._lock:
            self.requests.clear()
            self.faults.clear()
            self._max_in_flight = self._in_flight

    @property
    def open_connections(self) -> int:
        """Client connections open now (kept alive between requests), so tests can check a client closes them."""
        with self._lock:
            return len(self._connections)

    @property
    def max_in_flight(self) -> int:
        """Most requests handled at the same moment, so tests can check client concurrency."""
        return self._max_in_flight

    def _arrive(self, entry: dict, is_chat: bool) -> Fault | None:
        """Log a request and pop its fault atomically, so arrival order decides which request gets which fault."""
        with self._lock:
            self.requests.append(entry)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            return self.faults.pop(0) if is_chat and self.faults else None

    def _depart(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _track(self, connection: socket.socket) -> None:
        with self._lock:
            if self._stopping.is_set():
                _shutdown(connection)
            else:
                self._connections.add(connection)

    def _untrack(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def _completion(self, body: dict, replies: list[Reply]) -> dict:
        """An OpenAI chat.completion body echoing the requested model, with rough token usage."""
        top_n = int(body.get("top_logprobs") or 0)
        choices = [
            {
                "index": index,
                "message": {"role": "assistant", "content": reply.content},
                "logprobs": {"content": _logprob_content(reply, top_n)} if body.get("logprobs") and self.serve_logprobs else None,
                "finish_reason": reply.finish_reason,
            }
            for index, reply in enumerate(replies)
        ]
        prompt_tokens = _tokens("".join(str(m.get("content") or "") for m in body.get("messages") or []))
        completion_tokens = sum(max(1, _tokens(reply.content or "")) for reply in replies)
        return {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _shutdown(connection: socket.socket) -> None:
    """Wake any thread blocked reading this connection; it may already be closed."""
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


# --------------------------------------------------------------------------------------------
# scripted judges: responders that answer a judge prompt (one criterion, or the merged JSON form)


def prompt_text(body: dict) -> str:
    """The last message's text: the judge prompt with the judged inputs inside their tags."""
    messages = body.get("messages") or [{}]
    return str(messages[-1].get("content") or "")


def tagged(body: dict, tag: str) -> str:
    """The text between ``<tag>`` and ``</tag>`` in the prompt ("" when absent)."""
    import re

    match = re.search(rf"<{tag}>\n(.*?)\n</{tag}>", prompt_text(body), re.S)
    return match.group(1) if match else ""


def asked_criteria(body: dict) -> list[str]:
    """The criteria a judge prompt asks for: ``Criterion: x`` (separate) or the ``- x:`` lines (merged)."""
    import re

    text = prompt_text(body)
    single = re.search(r"^Criterion: (\S+)$", text, re.M)
    if single:
        return [single.group(1)]
    return re.findall(r"^- ([A-Za-z_][\w-]*): ", text, re.M)


def judge_answer(body: dict, score: Callable[[str], float]) -> str:
    """The answer in the format the prompt asks for, with ``score(criterion)`` for each criterion asked."""
    names = asked_criteria(body)
    if len(names) == 1:
        return f"{names[0]}: {score(names[0]):g}"
    return json.dumps({name: score(name) for name in names})


def by_content(rules: list[tuple[str, dict[str, float] | float]], default: float = 3) -> Responder:
    """A judge that scores by what it reads: the first rule whose regex matches the prompt gives the score (one
    number for every criterion, or per criterion); otherwise ``default``."""
    import re

    compiled = [(re.compile(pattern, re.S), scores) for pattern, scores in rules]

    def respond(body: dict) -> str:
        text = prompt_text(body)
        for pattern, scores in compiled:
            if pattern.search(text):
                return judge_answer(body, lambda c, scores=scores: scores.get(c, default) if isinstance(scores, dict) else scores)
        return judge_answer(body, lambda c: default)

    return respond


def noisy(seed: int = 0, scale: tuple[int, int] = (1, 5)) -> Responder:
    """A judge that answers a random score every time, even to the same prompt (seeded, thread-safe)."""
    import random

    rng = random.Random(seed)
    lock = threading.Lock()

    def draw(criterion: str) -> float:
        with lock:
            return rng.randint(*scale)

    return lambda body: judge_answer(body, draw)


def length_rising(tag: str = "summary", chars_per_point: int = 40, scale: tuple[int, int] = (1, 5)) -> Responder:
    """A verbose-biased judge: the longer the text in ``<tag>``, the higher every score (capped at the scale)."""

    def respond(body: dict) -> str:
        length = len(tagged(body, tag))
        return judge_answer(body, lambda c: min(scale[1], scale[0] + length // chars_per_point))

    return respond
