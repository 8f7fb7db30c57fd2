"""Probability-weighted scores (G-Eval) from the token log-probabilities of a reply.

A greedy reply says "4" even when the model put 45% on "5". The expected value over the values
the model considered at the score's tokens keeps that, and breaks the many ties of a 1-5 scale.
Two rules make the estimate the score's and nothing else's:

- **The place.** The score is weighted where the parser read it: each number in the reply equal to
  the parsed score is changed in turn, and the one whose change the parsed score follows is the
  score's. "On a 1-5 scale, my score: 5" is weighted at its last "5", never at the "5" of "1-5", and
  this stays true whatever rules the parser learns.
- **Every token of the number.** At each token of the number, every alternative the provider
  returned is another number (or no number): at the "4" of "4.5" the alternative "5" is 5, at its
  "5" the alternative "0" is 4.0, after its last token an alternative "2" would make 4.52, and an
  alternative that ends the number there ends it. A branch the reply did not take is read as far as
  its one token shows it (the "5" above counts as 5, not as a 5.x the reply never wrote).

The values inside the scale are renormalised (the provider shows only its top alternatives); the
probability that fell elsewhere (numbers outside the scale, text where the number should be, and
what the provider did not show) is reported as ``outside``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .parse import NUMBER, number_value

Position = Sequence[tuple[str, float]]  # the chosen token first, then its alternatives: (text, logprob)

_NUMBER_AT = re.compile(rf"(?<![0-9.]){NUMBER}")
_LEADING_NUMBER = re.compile(r"-?[0-9]*(?:\.[0-9]*)?")
_MORE_DIGITS = re.compile(r"[0-9]*(?:\.[0-9]*)?")
_DECIMALS = re.compile(r"[0-9]*")


@dataclass(frozen=True)
class Weighted:
    score: float
    outside: float  # probability at the score's tokens of anything but an in-scale number


def score_span(reply: str, score: float, scale: tuple[float, float], read: Callable[[str], float | None]) -> tuple[int, int] | None:
    """Where in the reply the parser read ``score``: the character span of that number, or None (a number
    word, say). ``read`` parses a reply the same way the judgment did and returns its score."""
    low, high = scale
    probe_value = low if score != low else high
    probe = str(int(probe_value)) if probe_value.is_integer() else repr(probe_value)
    for match in _NUMBER_AT.finditer(reply):
        if float(match[0]) != score:
            continue
        if read(reply[:match.start()] + probe + reply[match.end():]) == probe_value:
            return match.span()
    return None


def weighted_score(tokens: Sequence[Position], reply: str, span: tuple[int, int], scale: tuple[float, float]) -> Weighted | None:
    """The expected in-scale value at the number the reply wrote at ``span``, or None when the tokens are not
    this reply's or no alternative there is an in-scale number."""
    texts = [position[0][0] if position else None for position in tokens]
    if any(text is None for text in texts) or "".join(texts) != reply:  # type: ignore[arg-type]
        return None
    low, high = scale
    begin, end = span
    found: dict[float, list[float]] = {}  # value -> logprobs of the branches that wrote it

    def branch(number: str, logprob: float) -> None:
        value = number_value(number.rstrip("."))
        if value is not None and low <= value <= high and math.isfinite(logprob):
            found.setdefault(value, []).append(logprob)

    start = 0
    k = 0
    while start + len(texts[k] or "") <= begin:  # the token the number begins in
        start += len(texts[k] or "")
        k += 1
    number, path = "", 0.0  # the number written so far, and the log-probability of writing it
    while True:
        if k == len(tokens):  # the reply ends with the number
            branch(number, path)
            break
        text = texts[k] or ""
        lead = reply[start:begin] if start < begin else ""
        for alternative, logprob in tokens[k][1:]:
            branch(number + grown(alternative, lead, number), path + logprob)
        chosen = tokens[k][0][1]
        if start >= end:  # the token after the number: the reply's choice ended it here
            branch(number, path + chosen)
            break
        number += reply[max(start, begin):min(start + len(text), end)]
        path += chosen
        if start + len(text) > end:  # the chosen token runs on past the number ("4}")
            branch(number, path)
            break
        start += len(text)
        k += 1
    if not found:
        return None
    logprobs = [(value, lp) for value, lps in found.items() for lp in lps]
    best = max(lp for _, lp in logprobs)
    weights = [(value, math.exp(lp - best)) for value, lp in logprobs]
    total = sum(w for _, w in weights)
    inside = math.exp(best) * total
    return Weighted(sum(v * w for v, w in weights) / total, max(0.0, 1.0 - inside))


def grown(alternative: str, lead: str, number: str) -> str:
    """What an alternative token adds to the number written so far ("" ends the number there)."""
    if not number:  # the number's first token: what comes before the number in the chosen token may differ
        rest = alternative[len(lead):] if lead and alternative.startswith(lead) else alternative
        return _LEADING_NUMBER.match(rest.lstrip())[0]  # type: ignore[index]
    pattern = _DECIMALS if "." in number else _MORE_DIGITS
    return pattern.match(alternative)[0]  # type: ignore[index]
