"""Read judge scores out of what real models reply.

A reply that holds no score inside the criterion's scale is a failure with a reason code.
Clamping, defaulting or guessing would hide exactly the judge defects this plugin measures,
so every rule below prefers "no score" over a plausible-looking wrong one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass

__all__ = ["FAILURE_KINDS", "NUMBER", "ParsedScore", "json_objects", "number_value", "parse_merged", "parse_score"]

FAILURE_KINDS: tuple[str, ...] = ("empty", "refusal", "no_score", "unmarked_number", "out_of_scale", "missing_criterion",
                                  "bad_json")


@dataclass(frozen=True)
class ParsedScore:
    """One criterion's score, or the reason no score could be trusted."""

    score: float | None
    failure: str | None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass(frozen=True)
class _Candidate:
    """A number the judge wrote, with the denominator it wrote after it ("4/10" keeps 10)."""

    value: float
    out_of: float | None = None


# The one rule for what a written number is, shared by the parser and the probability weighting:
# ASCII digits only, so "²" or "٣" is text, never int("²").
NUMBER = r"-?[0-9]+(?:\.[0-9]+)?"

_NUMBER_WORDS = {word: n for n, word in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                                                    "nine", "ten"])}

# A digit number that is not part of a word, version or hyphenated name ("GPT-4", "v2", "1.2.3", "5-point").
_DIGITS = rf"(?<![\w.\-]){NUMBER}(?!\w|-\w|\.[0-9])"
# A number word only where it ends the phrase, so "one of the best" is not a 1.
_WORD = rf"\b(?:{'|'.join(_NUMBER_WORDS)})\b(?=\s*(?:$|[.,;:!?)*\]\"'/]|out\s+of))"
_VALUE = rf"(?:{_DIGITS}|{_WORD})"
_OUT_OF = rf"(?:\s*(?:/|out\s+of)\s*({_VALUE}))?"

_RAW_NUMBER = NUMBER
# Scale echoes from the prompt ("1 to 5", "1-5" with a hyphen or a dash, "between 3 and 4", "5 point scale")
# are never the score.
_RANGE = re.compile(
    rf"(?<![\w.]){_RAW_NUMBER}[ \t]*(?:-|\u2013|\u2014|\bto\b)[ \t]*{_RAW_NUMBER}(?!\w)"
    rf"|\bbetween[ \t]+{_RAW_NUMBER}[ \t]+and[ \t]+{_RAW_NUMBER}"
    rf"|(?<![\w.]){_RAW_NUMBER}[ \t-]*point\b",
    re.IGNORECASE,
)
_BARE = re.compile(rf"[\s*\"'`\[(]*({_VALUE}){_OUT_OF}[\s*\"'`\]).!]*", re.IGNORECASE)
_FRACTION = re.compile(rf"({_VALUE})\s*(?:/|out\s+of)\s*({_VALUE})", re.IGNORECASE)
_STANDALONE = re.compile(_DIGITS)
# A fenced block (optionally with a language tag) whose content is the score alone: "```\n4\n```".
_FENCED = re.compile(r"```(?:[A-Za-z][\w+\-]*[ \t]*\n)?(.*?)```", re.DOTALL)
# Where a number is presented as the score, and how to get one there, for unmarked_number's detail.
_SCORE_FORMS = 'the score (the whole reply, "score: N", "N/5", a JSON field or a fenced block)'
_SCORE_FIX = ('Fix: ask for the score as "score: N" (or a JSON object) in the instruction or the template, '
              "or set judge.structured: true")
_MERGED_FORMS = 'a criterion\'s score (a JSON object {criterion: score} or a line "criterion: N")'
_MERGED_FIX = "Fix: ask for one JSON object holding every criterion's score, or set judge.structured: true"
_REFUSAL = re.compile(  # \u2019: the typographic apostrophe models often write
    r"\bas an ai language model\b"
    r"|\bi(?:[\u2019']m| am) (?:unable|not able) to\b"
    r"|\bi (?:can[\u2019']?t|cannot|can not|won[\u2019']t|will not|must decline to)\s+"
    r"(?:help|assist|evaluate|rate|score|grade|judge|assess|provide|comply|fulfil|complete|do that)",
    re.IGNORECASE,
)
_LOOKS_LIKE_JSON = re.compile(r"\{\s*[\"']|```json", re.IGNORECASE)

_JSON = json.JSONDecoder(parse_int=float)  # floats only, and no OverflowError on huge integers
_GENERIC_KEYS = ("score", "rating", "grade", "value", "final score", "overall score")


def _label_pattern(label: str, *, allow_of: bool) -> re.Pattern[str]:
    """A label, an optional "(1-5)", a separator, then the number and an optional "/M" or "out of M"."""
    separator = r"[:=>]|\bis\b|\bwould be\b" + (r"|\bof\b" if allow_of else "")
    return re.compile(
        rf"(?<![a-z0-9])(?:{label})(?:\s*\([^()\n]{{0,40}}\))?[\s*\"'`]*(?:{separator})[\s*\"'`\[(]*"
        rf"({_VALUE}){_OUT_OF}",
        re.IGNORECASE,
    )


# "of" only after the generic labels: "a score of 4" is a score, "the coherence of 3 paragraphs" is not.
_FINAL_LABEL = _label_pattern(r"final[\s_\-]+(?:answer|score|rating|grade|verdict)", allow_of=True)
_GENERIC_LABEL = _label_pattern(r"score|rating|grade|verdict", allow_of=True)


def parse_score(reply: str | None, scale: tuple[float, float], criterion: str | None = None) -> ParsedScore:
    """Score for one criterion from a free-text or JSON reply.

    Candidates are looked for in this order, and the first place that has any decides:

    1. the first JSON object holding a score (fenced or not, prose around it allowed): the
       ``criterion`` key (case, spaces, underscores and hyphens ignored; also "<criterion> score"),
       which decides even when its value is unreadable, else a generic key (score/rating/grade/
       value), else its only numeric value; values may be numbers, numeric strings or
       ``{"score": n, ...}``;
    2. the whole reply is one number ("4", "4.", "**4**", "four", "4/5"), else a fenced block
       holding only one ("```\\n4\\n```" after some reasoning);
    3. a labelled number: "Final answer/score: n", then "<criterion>: n", then "Score/Rating: n"
       (separators ":", "=", "is", and "of" for score/rating: "a score of 4");
    4. an "n/m" or "n out of m" form.

    Nothing else is a score: a number counts only where the reply presents it as one. When
    nothing above matched, the reason is a refusal, JSON without a readable score, or JSON-like
    text that does not parse; otherwise prose that merely contains numbers ("There are 2 factual
    errors", "1. The summary is coherent.") is ``unmarked_number``, naming the numbers and the
    fix, and prose without any is ``no_score``. Guessing which number of the prose was meant
    would turn a count or a list marker into a plausible score.

    Ranges echoed from the prompt ("1 to 5", "1-5", "5-point") are removed before steps 2-4.
    Different numbers at the same step are ``no_score`` (conflicting), never a pick. A score
    written over another denominator ("4/10" on [1, 5]) is ``out_of_scale``: no rescaling.
    Number words zero..ten are read in steps 2-4.
    """
    if reply is None or not reply.strip():
        return ParsedScore(None, "empty", "the reply is empty")
    objects = json_objects(reply)
    for obj in objects:
        verdict = _object_verdict(obj, criterion, scale)
        if verdict is not None:
            return verdict
    text = _RANGE.sub("~", reply)
    for candidates in _text_tiers(text, criterion):
        decided = _decide(candidates, scale)
        if decided is not None:
            return decided
    return _last_resort(reply, text, objects, scale, criterion)


def parse_merged(reply: str | None, scales: dict[str, tuple[float, float]]) -> dict[str, ParsedScore]:
    """Scores for every criterion from one reply that should hold a JSON object {criterion: score}.

    The object used is the first one naming a criterion, also when the judge wrapped it
    (``{"scores": {...}, "reasoning": ...}``). Without any JSON object, labelled lines such as
    "coherence: 4\\nfluency: 3" are accepted; criteria absent from the object or the lines are
    ``missing_criterion``. As in ``parse_score``, a number counts only where the reply presents it
    as a criterion's score: prose that merely contains numbers is ``unmarked_number`` for every
    criterion, prose without any is ``bad_json``.
    """
    if reply is None or not reply.strip():
        return {name: ParsedScore(None, "empty", "the reply is empty") for name in scales}
    obj = _scores_object(json_objects(reply), scales)
    if obj is not None:
        return {name: _merged_entry(obj, name, scale) for name, scale in scales.items()}
    text = _RANGE.sub("~", reply)
    found = {name: _criterion_candidates(text, name) for name in scales}
    if any(found.values()):
        missing = "neither a JSON object nor a labelled line holds it"
        return {
            name: _decide(found[name], scale) or ParsedScore(None, "missing_criterion", missing)
            for name, scale in scales.items()
        }
    if _REFUSAL.search(reply):
        failure = ParsedScore(None, "refusal", "the judge refused")
    elif not _LOOKS_LIKE_JSON.search(reply) and (numbers := _prose_numbers(text)):
        failure = _unmarked(numbers, _MERGED_FORMS, _MERGED_FIX)
    else:
        failure = ParsedScore(None, "bad_json", "no JSON object in the reply")
    return {name: failure for name in scales}


def number_value(text: str) -> float | None:
    """The value of a text that is a number by the rule above, else None."""
    return float(text) if re.fullmatch(NUMBER, text) else None


def json_objects(text: str) -> list[dict]:
    """Every top-level JSON object in the text; scanning each "{" survives braces inside strings."""
    objects: list[dict] = []
    start = text.find("{")
    while start != -1:
        try:
            value, end = _JSON.raw_decode(text, start)
        except (ValueError, RecursionError):
            start = text.find("{", start + 1)
            continue
        if isinstance(value, dict):
            objects.append(value)
        start = text.find("{", end)
    return objects


def _norm(name: str) -> str:
    """So "Factual_Accuracy", "factual-accuracy" and "factual accuracy" name the same criterion."""
    return re.sub(r"[\s_\-]+", " ", name).strip().casefold()


def _criterion_keys(criterion: str) -> tuple[str, ...]:
    name = _norm(criterion)
    return (name, f"{name} score", f"{name} rating")


def _find_key(obj: dict, names: Iterable[str]) -> str | None:
    """The object's own key for the first matching normalised name."""
    by_name: dict[str, str] = {}
    for key in obj:
        by_name.setdefault(_norm(key), key)
    return next((by_name[name] for name in names if name in by_name), None)


def _json_value(value: object) -> _Candidate | None:
    """A score as judges write it in JSON: 4, "4", "4/5" or {"score": 4, "reason": ...}."""
    if isinstance(value, float):
        return _Candidate(value)
    if isinstance(value, str):
        return _bare(_RANGE.sub("~", value))
    if isinstance(value, dict):
        key = _find_key(value, _GENERIC_KEYS)
        return None if key is None else _json_value(value[key])
    return None


def _object_verdict(obj: dict, criterion: str | None, scale: tuple[float, float]) -> ParsedScore | None:
    """The criterion's key decides, even when its value is unreadable: another key would be a guess."""
    if criterion and _find_key(obj, _criterion_keys(criterion)) is not None:
        return _merged_entry(obj, criterion, scale)
    key = _find_key(obj, _GENERIC_KEYS)
    if key is not None:
        candidate = _json_value(obj[key])
    else:
        found = [candidate for candidate in map(_json_value, obj.values()) if candidate is not None]
        candidate = found[0] if len(found) == 1 else None
    return None if candidate is None else _check(candidate, scale)


def _number(token: str) -> float:
    word = _NUMBER_WORDS.get(token.lower())
    return float(word) if word is not None else float(token)


def _candidates(pattern: re.Pattern[str], text: str) -> list[_Candidate]:
    return [_Candidate(_number(m[1]), _number(m[2]) if m[2] else None) for m in pattern.finditer(text)]


def _bare(text: str) -> _Candidate | None:
    match = _BARE.fullmatch(text)
    return None if match is None else _Candidate(_number(match[1]), _number(match[2]) if match[2] else None)


def _criterion_candidates(text: str, criterion: str | None) -> list[_Candidate]:
    words = _norm(criterion or "").split()
    if not words:
        return []
    label = r"[\s_\-]+".join(map(re.escape, words)) + r"(?:[\s_\-]+(?:score|rating))?"
    return _candidates(_label_pattern(label, allow_of=False), text)


def _text_tiers(text: str, criterion: str | None) -> Iterator[list[_Candidate]]:
    """Steps 2-4 of parse_score, most explicit first."""
    bare = _bare(text)
    yield [] if bare is None else [bare]
    yield [c for block in _FENCED.findall(text) if (c := _bare(block)) is not None]
    yield _candidates(_FINAL_LABEL, text)
    yield _criterion_candidates(text, criterion)
    yield _candidates(_GENERIC_LABEL, text)
    yield _candidates(_FRACTION, text)


def _decide(candidates: list[_Candidate], scale: tuple[float, float]) -> ParsedScore | None:
    """None when there is nothing to decide on; disagreeing candidates are no score at all."""
    # "4/5" and "4" say the same on a scale ending at 5.
    distinct = {_Candidate(c.value) if c.out_of == scale[1] else c for c in candidates}
    if not distinct:
        return None
    if len(distinct) > 1:
        shown = ", ".join(sorted(map(_show, distinct)))
        return ParsedScore(None, "no_score", f"conflicting scores in the reply: {shown}")
    return _check(distinct.pop(), scale)


def _check(candidate: _Candidate, scale: tuple[float, float]) -> ParsedScore:
    low, high = scale
    where = f"[{low:g}, {high:g}]"
    if candidate.out_of is not None and candidate.out_of != high:
        return ParsedScore(None, "out_of_scale", f"{_show(candidate)} is a score on another scale than {where}")
    if not low <= candidate.value <= high:
        return ParsedScore(None, "out_of_scale", f"{candidate.value:g} is outside the scale {where}")
    return ParsedScore(candidate.value, None)


def _show(candidate: _Candidate) -> str:
    return f"{candidate.value:g}" + ("" if candidate.out_of is None else f"/{candidate.out_of:g}")


def _last_resort(
    reply: str, text: str, objects: list[dict], scale: tuple[float, float], criterion: str | None
) -> ParsedScore:
    """Why nothing in the reply is a score (parse_score found no candidate at steps 1-4)."""
    if _REFUSAL.search(reply):
        return ParsedScore(None, "refusal", "the judge refused")
    if objects:
        if criterion:  # an object with the criterion's key would have decided already
            return ParsedScore(None, "missing_criterion", f"no {criterion!r} key in the JSON object")
        return ParsedScore(None, "no_score", "the JSON object holds no readable score")
    if _LOOKS_LIKE_JSON.search(reply):
        return ParsedScore(None, "bad_json", "the reply looks like JSON but does not parse")
    numbers = _prose_numbers(text)
    if numbers:
        return _unmarked(numbers, _SCORE_FORMS, _SCORE_FIX)
    return ParsedScore(None, "no_score", "no number in the reply")


def _prose_numbers(text: str) -> list[float]:
    """The distinct standalone numbers of a text (scale echoes already removed), in the order written."""
    return list(dict.fromkeys(_number(token) for token in _STANDALONE.findall(text)))


def _unmarked(numbers: list[float], forms: str, fix: str) -> ParsedScore:
    """What was found, where a score would have been read, and the fix."""
    shown = ", ".join(f"{n:g}" for n in numbers[:5]) + (", ..." if len(numbers) > 5 else "")
    found = f"the number {shown} appears" if len(numbers) == 1 else f"the numbers {shown} appear"
    return ParsedScore(None, "unmarked_number", f"{found} in prose, not presented as {forms}. {fix}")


def _scores_object(objects: list[dict], criteria: Collection[str]) -> dict | None:
    """The first object naming a criterion, looking one level into wrappers like {"scores": {...}}."""
    for obj in objects:
        for inner in (obj, *(value for value in obj.values() if isinstance(value, dict))):
            if any(_find_key(inner, _criterion_keys(name)) is not None for name in criteria):
                return inner
    return objects[0] if objects else None


def _merged_entry(obj: dict, criterion: str, scale: tuple[float, float]) -> ParsedScore:
    key = _find_key(obj, _criterion_keys(criterion))
    if key is None:
        return ParsedScore(None, "missing_criterion", f"no {criterion!r} key in the JSON object")
    candidate = _json_value(obj[key])
    if candidate is None:
        return ParsedScore(None, "no_score", f"{criterion!r} holds {obj[key]!r:.60}, not a score")
    return _check(candidate, scale)
