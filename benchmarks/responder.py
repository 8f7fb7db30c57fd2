"""Scripted answers for every kind of prompt the benchmarks send, from this project and from TextGrad.

The answers only have to be well-formed (a score the parser accepts, an instruction the
optimizer keeps, a critique of realistic length): the benchmarks measure time and calls, not
quality. Scores are a hash of the prompt, so repeated runs get the same replies and a warm
cache is exact.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

SEPARATE = re.compile(r"Answer in this format and nothing else:\n(\w+): <score from (\S+) to (\S+)>")
MERGED = re.compile(r'"(\w+)": <score from (\S+) to (\S+)>')
CRITERION = re.compile(r'criterion "(\w+)"')
CRITIQUE = ("The judge's score does not follow the text closely enough: it rewards surface fluency and overlooks "
            "whether the summary keeps the source's main points in order. Keep the scale, but say what a 1, a 3 and "
            "a 5 look like, and ask the judge to check the summary sentence by sentence against the source.")


def digest(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def score(text: str, low: str, high: str) -> int:
    """A stable pseudo-random score on the asked scale."""
    lo, hi = int(float(low)), int(float(high))
    return lo + digest(text) % (hi - lo + 1)


def new_instruction(criterion: str, prompt: str) -> str:
    """A rewrite that differs from every earlier one, so the optimizer always has something to gate."""
    return (f"Rate the {criterion} of the summary from 1 to 5. Check it sentence by sentence against the source; "
            f"a 5 has no flaw, a 3 has one clear flaw, a 1 is unusable (revision {digest(prompt) % 10_000}).")


def answer(body: dict[str, Any]) -> str:
    """The reply to one chat request, chosen by what the prompt asks for."""
    messages = body.get("messages") or []
    prompt = "\n".join(str(m.get("content") or "") for m in messages)
    last = str(messages[-1].get("content") or "") if messages else ""
    if "<IMPROVED_VARIABLE>" in prompt:  # TextGrad's optimizer
        return f"<IMPROVED_VARIABLE>{new_instruction('coherence', prompt)}</IMPROVED_VARIABLE>"
    if "between <instruction> and </instruction> tags" in last:  # our per-criterion optimizer
        found = CRITERION.search(last)
        return f"<instruction>{new_instruction(found.group(1) if found else 'quality', last)}</instruction>"
    if "mapping each criterion to its new instruction" in last:  # our combined optimizer
        keys = re.findall(r'"(\w+)"', last.rsplit("exactly these keys:", 1)[-1])
        return json.dumps({k: new_instruction(k, last) for k in keys})
    separate = SEPARATE.search(last)
    if separate:
        name, low, high = separate.groups()
        return f"{name}: {score(last + name, low, high)}"
    if "Answer with one JSON object and nothing else" in last:
        return json.dumps({name: score(last + name, low, high) for name, low, high in MERGED.findall(last)})
    if messages and messages[0].get("role") == "system" and "Rate the" in str(messages[0].get("content")):
        return f"coherence: {score(last, '1', '5')}"  # TextGrad's forward pass: the instruction is its system prompt
    if "On a scale from 1 to 10" in last:  # diagnostics
        return f"{1 + digest(last) % 10}. The feedback is mostly about the criterion."
    return CRITIQUE
