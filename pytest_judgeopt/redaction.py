"""Credentials out of every text we store or print: the patterns of common keys, and the literal
values a call sent (a provider may echo a key in a shape no pattern recognises).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from .spec import Model, is_credential_name

SECRET = re.compile(r"(\bsk-[A-Za-z0-9_\-]{6,}|Bearer\s+\S+|(?i:api[_-]?key)[\"']?\s*[:=]\s*[\"']?[^\s\"',}]+)")


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
