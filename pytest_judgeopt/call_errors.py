"""How a model call fails: the kinds (retried, or refusing the setup so every later call is stopped),
``CallError`` with the fix a user can act on, the wait a server asked for, and the kind of an exception
(``classify``: litellm's exception classes are passed in by llm.py, the one module that imports litellm).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from .redaction import redact
from .spec import Model

RETRYABLE = {"rate_limit", "server", "timeout", "connection", "bad_response"}


# Failures of the setup, not of one call: every call to the model would fail the same way (a refused or missing
# key, a provider litellm does not know, the embedded model's extra not installed). The first one stops every
# call to that model for the rest of the session.
REFUSED = {"auth", "provider", "missing_extra"}


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


class BadResponse(Exception):
    """The provider answered, but not with a usable chat completion."""


class UnknownProvider(Exception):
    """litellm cannot tell which provider a model string names."""


# Kinds for statuses litellm does not map to an exception class of their own.
STATUS_KINDS = {401: "auth", 403: "auth", 404: "not_found", 408: "timeout", 429: "rate_limit"}


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


def model_identity(model: Model) -> str:
    """A model with the endpoint and credentials it is called with: a refusal belongs to that combination
    (the same model name with another key or server may well answer). Held in memory only."""
    return json.dumps([model.name, list(model.params)], sort_keys=True, default=str)


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


def classify(exc: BaseException, errors: Any) -> tuple[str | None, float | None]:
    """Kind of failure, and the wait the server asked for (Retry-After), if any. The kind is None for what
    is no provider's or transport's failure (a bug: a TypeError, a KeyError), which the client re-raises."""
    from .local_model import LocalModelUnavailable

    e = errors  # litellm.exceptions, passed in by the one module that imports litellm
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
