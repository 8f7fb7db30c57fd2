from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_judgeopt.parse import FAILURE_KINDS, ParsedScore, parse_merged, parse_score

FIVE = (1.0, 5.0)
TEN = (1.0, 10.0)

# (reply, scale, criterion, expected score or failure kind)
SCORE_CASES = [
    # JSON, fenced or not, with prose around it
    ('{"coherence": 4}', FIVE, "coherence", 4),
    ('{"score": 4}', FIVE, None, 4),
    ('{"rating": "4"}', FIVE, None, 4),
    ('{"coherence": {"score": 4, "reason": "Flows well."}}', FIVE, "coherence", 4),
    ('{"coherence": {"score": 4, "reason": "Flows well."}}', FIVE, None, 4),
    ('```json\n{"score": 3, "explanation": "Mostly clear."}\n```', FIVE, None, 3),
    ('Here is my assessment:\n```json\n{"Coherence": 5}\n```\nLet me know if you need more.', FIVE, "coherence", 5),
    ('{"Factual_Accuracy": 2, "fluency": 5}', FIVE, "factual accuracy", 2),
    ('{"factual-accuracy score": 4}', FIVE, "Factual Accuracy", 4),
    ('{"reasoning": "Uses {braces} and 3 examples }", "score": 4}', FIVE, None, 4),
    ('{"coherence": 4, "fluency": 2}', FIVE, "fluency", 2),
    ('{"coherence": 4, "fluency": 2}', FIVE, None, "no_score"),
    ('{"coherence": 4, "fluency": 2}', FIVE, "relevance", "missing_criterion"),
    ('{"coherence": "excellent", "score": 2}', FIVE, "coherence", "no_score"),
    ('{"score": 7}', FIVE, None, "out_of_scale"),
    ('{"score": "4/10"}', FIVE, None, "out_of_scale"),
    ('{"score": null}', FIVE, None, "no_score"),
    ('{"evaluation": "good"}', FIVE, None, "no_score"),
    ('{"coherence" 4}', FIVE, None, "bad_json"),
    ('```json\n{"score": 4, "reason": "cut off mid-sent', FIVE, None, 4),
    ("{'score': 4}", FIVE, None, 4),
    ('{"score": 4,}', FIVE, None, 4),
    # the whole reply is the number
    ("4", FIVE, None, 4),
    ("4.5", FIVE, None, 4.5),
    (" 3\n", FIVE, None, 3),
    ("4.", FIVE, None, 4),
    ("**4**", FIVE, None, 4),
    ("Four", FIVE, None, 4),
    ("1", FIVE, None, 1),
    ("10", TEN, None, 10),
    ("0", (0.0, 10.0), None, 0),
    ("0.5", (0.0, 1.0), None, 0.5),
    ("-1", (-1.0, 1.0), None, -1),
    ("7", FIVE, None, "out_of_scale"),
    ("0", FIVE, None, "out_of_scale"),
    ("5.5", FIVE, None, "out_of_scale"),
    # labelled
    ("Rating: 4", FIVE, None, 4),
    ("Score: 3/5", FIVE, None, 3),
    ("**Score:** 4.5", FIVE, None, 4.5),
    ("Score: 3.75", FIVE, None, 3.75),
    ("Coherence: 4", FIVE, "coherence", 4),
    ("coherence score = 2", FIVE, "coherence", 2),
    ("coherence score = 2", FIVE, None, 2),
    ("**Coherence**: 4\n\nThe text flows logically.", FIVE, "coherence", 4),
    ("Final answer: 3", FIVE, None, 3),
    ("The summary is concise and accurate.\n\nScore: 5", FIVE, None, 5),
    ("Explanation: The summary covers 2 of the 3 main points.\nRating: 3", FIVE, None, 3),
    ("Rating: [[4]]", TEN, None, 4),
    ("<reasoning>Clear.</reasoning>\n<score>4</score>", FIVE, None, 4),
    ("The score is 4.", FIVE, None, 4),
    ("I give it a score of 4 because it is clear and has 2 minor issues.", FIVE, None, 4),
    ("Score: four.", FIVE, None, 4),
    ("Coherence: 4\nFluency: 2\nRelevance: 5", FIVE, "fluency", 2),
    ("Coherence score: 4\nFluency score: 2", FIVE, None, "no_score"),
    ("Initial score: 2. After reconsidering the ending, Final score: 4", FIVE, None, 4),
    ("Score: 4/5\n\nRating: 4", FIVE, None, 4),
    ("GPT-4 would call this fluent. Rating: 3", FIVE, None, 3),
    ("I cannot verify every fact, but overall Score: 2", FIVE, None, 2),
    ("Score: -2", (-3.0, 3.0), None, -2),
    # n/m and "n out of m"
    ("I would rate this a 4 out of 5.", FIVE, None, 4),
    ("4/5", FIVE, None, 4),
    ("4 out of 5", FIVE, None, 4),
    ("I'd rate it four out of five.", FIVE, None, 4),
    ("Score: 8/10", TEN, None, 8),
    ("4/10", FIVE, None, "out_of_scale"),
    ("Score: 4 out of 10", FIVE, None, "out_of_scale"),
    ("3/5 of the facts are right, and 4/5 overall.", FIVE, None, "no_score"),
    # scale echoes from the prompt are not scores
    ("On a scale of 1 to 5, I give 4 out of 5", FIVE, None, 4),
    ("on a scale of 1 to 5, my rating: 4", FIVE, None, 4),
    ("On a 1-5 scale this deserves 2/5.", FIVE, None, 2),
    ("Using the 5-point scale, I'd give it a score of 3.", FIVE, None, 3),
    ("On a scale of 1 to 5, I give 4", FIVE, None, "unmarked_number"),  # the prose's number, however alone
    ("Using the 5-point scale, I'd give it 3.", FIVE, None, "unmarked_number"),
    ("Coherence (1-5): 3", FIVE, "coherence", 3),
    ("I'd say somewhere between 3 and 4.", FIVE, None, "no_score"),
    ("Score: 3-4", FIVE, None, "no_score"),
    # a fenced block holding only the score, after reasoning
    ("The summary is clear.\n```\n4\n```", FIVE, None, 4),
    ("Reasoning first.\n```text\n3\n```\nThat is my answer.", FIVE, None, 3),
    ("It reads well: ```2```", FIVE, None, 2),
    ("```\n4\n```\n```\n2\n```", FIVE, None, "no_score"),
    ("```\n7\n```", FIVE, None, "out_of_scale"),
    # prose that merely contains a number is no score, however few numbers it holds
    ("There are 2 factual errors in the summary.", FIVE, None, "unmarked_number"),
    ("1. The summary is coherent.", FIVE, None, "unmarked_number"),
    ("This is a well-structured summary. I would give it a 4.", FIVE, None, "unmarked_number"),
    ("As GPT-4 I would give this 3.", FIVE, None, "unmarked_number"),
    ("The summary has 3 sentences and I give it 5", FIVE, None, "unmarked_number"),
    ("The summary has 12 sentences and I give it 4", FIVE, None, "unmarked_number"),
    ("This summary deserves a 9.", FIVE, None, "unmarked_number"),
    ("The summary is good.\n\n4", FIVE, None, "unmarked_number"),
    ("Good summary, no errors.", FIVE, None, "no_score"),
    ("Version 1.2.3 of the text is fine.", FIVE, None, "no_score"),
    ("On a scale of 1 to 5 it is fine.", FIVE, None, "no_score"),
    # empty and refusals
    ("", FIVE, None, "empty"),
    ("   \n\t", FIVE, None, "empty"),
    (None, FIVE, None, "empty"),
    ("I'm sorry, but I can't help with that.", FIVE, None, "refusal"),
    ("As an AI language model, I cannot provide personal opinions on 2 texts.", FIVE, None, "refusal"),
    ("I cannot evaluate this text because it is empty.", FIVE, None, "refusal"),
    ("I\u2019m unable to assess this summary.", FIVE, None, "refusal"),
]


def assert_parsed(result: ParsedScore, expected: float | str) -> None:
    if isinstance(expected, str):
        assert (result.score, result.failure, result.ok) == (None, expected, False), result
        assert result.detail
    else:
        assert result.ok and result.failure is None, result
        assert result.score == pytest.approx(expected)


@pytest.mark.parametrize(("reply", "scale", "criterion", "expected"), SCORE_CASES)
def test_parse_score(reply: str | None, scale: tuple[float, float], criterion: str | None, expected: float | str) -> None:
    assert_parsed(parse_score(reply, scale, criterion), expected)


def test_failure_details_explain() -> None:
    assert parse_score("7", FIVE).detail == "7 is outside the scale [1, 5]"
    assert "4/10" in parse_score("4/10", FIVE).detail


def test_an_unmarked_number_says_what_was_found_and_the_fix() -> None:
    one = parse_score("There are 2 factual errors in the summary.", FIVE).detail
    assert one.startswith("the number 2 appears in prose, not presented as the score")
    assert 'Fix: ask for the score as "score: N"' in one and "judge.structured: true" in one
    several = parse_score("The summary has 3 sentences and I give it 5", FIVE).detail
    assert several.startswith("the numbers 3, 5 appear in prose")
    assert parse_score("On a scale of 1 to 5, I give 4", FIVE).detail.startswith("the number 4 appears")  # no echo
    merged = parse_merged("There are 2 factual errors.", TWO)["coherence"].detail
    assert merged.startswith("the number 2 appears in prose, not presented as a criterion's score")
    assert "judge.structured: true" in merged


# One reply (and the criterion asked) per kind of failure the parser names.
FAILING_REPLIES = {
    "empty": ("", None),
    "refusal": ("I'm sorry, I can't help with that.", None),
    "no_score": ("It reads well.", None),
    "unmarked_number": ("There are 2 factual errors in the summary.", None),
    "out_of_scale": ("7", None),
    "missing_criterion": ('{"coherence": 4, "fluency": 2}', "relevance"),
    "bad_json": ('{"coherence" 4}', None),
}


def test_every_failure_kind_named_is_one_the_parser_reports() -> None:
    """FAILURE_KINDS is what reports and the schema count by: each kind must come out of a reply, and
    a kind added to the list without a reply that produces it fails here."""
    reported = {kind: parse_score(reply, FIVE, criterion) for kind, (reply, criterion) in FAILING_REPLIES.items()}
    assert {kind: parsed.failure for kind, parsed in reported.items()} == {kind: kind for kind in FAILURE_KINDS}
    assert not any(parsed.ok or parsed.score is not None or not parsed.detail for parsed in reported.values())


def test_a_parsed_score_is_ok_only_without_failure_and_cannot_be_changed() -> None:
    assert ParsedScore(4.0, None).ok
    assert not ParsedScore(None, "missing_criterion").ok
    parsed = ParsedScore(4.0, None)
    for each in dataclasses.fields(ParsedScore):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(parsed, each.name, None)


TWO = {"coherence": FIVE, "fluency": FIVE}

# (reply, scales, {criterion: expected score or failure kind})
MERGED_CASES = [
    ('{"coherence": 4, "fluency": 3}', TWO, {"coherence": 4, "fluency": 3}),
    ('{"Coherence": "4", "FLUENCY": {"score": 3, "reason": "ok"}}', TWO, {"coherence": 4, "fluency": 3}),
    ('{"scores": {"coherence": 4, "fluency": 3}, "reasoning": "short"}', TWO, {"coherence": 4, "fluency": 3}),
    (
        'Sure!\n```json\n{"reasoning": "uses {x} and }", "coherence": 5, "fluency": 2}\n```',
        TWO,
        {"coherence": 5, "fluency": 2},
    ),
    (
        'Format: {"example": true}. Result: {"coherence": 4, "fluency": 3}',
        TWO,
        {"coherence": 4, "fluency": 3},
    ),
    ('{"factual_accuracy": 4}', {"Factual Accuracy": FIVE}, {"Factual Accuracy": 4}),
    ('{"coherence_score": 8, "fluency": 3}', {"coherence": TEN, "fluency": FIVE}, {"coherence": 8, "fluency": 3}),
    ('{"coherence": 4}', TWO, {"coherence": 4, "fluency": "missing_criterion"}),
    ('{"coherence": 9, "fluency": 3}', TWO, {"coherence": "out_of_scale", "fluency": 3}),
    ('{"coherence": "high", "fluency": true}', TWO, {"coherence": "no_score", "fluency": "no_score"}),
    ('{"verdict": "good"}', TWO, {"coherence": "missing_criterion", "fluency": "missing_criterion"}),
    ("Coherence: 4\nFluency: 3/5", TWO, {"coherence": 4, "fluency": 3}),
    ("Coherence: 4\nThe fluency is fine.", TWO, {"coherence": 4, "fluency": "missing_criterion"}),
    ('{"coherence": 4, "fluency": 3', TWO, {"coherence": 4, "fluency": 3}),
    ("The text reads well.", TWO, {"coherence": "bad_json", "fluency": "bad_json"}),
    ("There are 2 factual errors in the summary.", TWO, {"coherence": "unmarked_number", "fluency": "unmarked_number"}),
    ("1. The summary is coherent.", TWO, {"coherence": "unmarked_number", "fluency": "unmarked_number"}),
    ("4", TWO, {"coherence": "unmarked_number", "fluency": "unmarked_number"}),
    ('{"coherence" 4, "fluency" 3}', TWO, {"coherence": "bad_json", "fluency": "bad_json"}),
    ("", TWO, {"coherence": "empty", "fluency": "empty"}),
    (None, TWO, {"coherence": "empty", "fluency": "empty"}),
    ("I'm sorry, but I can't help with that.", TWO, {"coherence": "refusal", "fluency": "refusal"}),
]


@pytest.mark.parametrize(("reply", "scales", "expected"), MERGED_CASES)
def test_parse_merged(reply: str | None, scales: dict[str, tuple[float, float]], expected: dict[str, float | str]) -> None:
    result = parse_merged(reply, scales)
    assert result.keys() == expected.keys()
    for name, want in expected.items():
        assert_parsed(result[name], want)


scales = st.tuples(st.integers(-20, 20), st.integers(0, 50)).map(lambda t: (float(t[0]), float(t[0] + t[1])))


@given(scales, st.data())
def test_any_integer_in_scale_parses(scale: tuple[float, float], data: st.DataObject) -> None:
    n = data.draw(st.integers(int(scale[0]), int(scale[1])))
    assert parse_score(str(n), scale) == ParsedScore(n, None)


@given(scales, st.data())
def test_any_integer_outside_scale_fails(scale: tuple[float, float], data: st.DataObject) -> None:
    n = data.draw(st.integers(max_value=int(scale[0]) - 1) | st.integers(min_value=int(scale[1]) + 1))
    result = parse_score(str(n), scale)
    assert (result.score, result.failure) == (None, "out_of_scale")


@given(st.text(), st.sampled_from([None, "coherence", "Factual Accuracy"]))
def test_parse_score_never_raises(reply: str, criterion: str | None) -> None:
    result = parse_score(reply, FIVE, criterion)
    assert result.failure in (None, *FAILURE_KINDS)
    assert result.ok == (result.score is not None)
    if result.ok:
        assert FIVE[0] <= result.score <= FIVE[1]


@given(st.text(alphabet=st.sampled_from(list('{}[]":,0123456789 .-/abcdeiorstuw\n'))))
def test_parse_score_never_raises_on_json_like_text(reply: str) -> None:
    result = parse_score(reply, FIVE, "score")
    assert result.ok == (result.score is not None)


@given(st.text())
def test_parse_merged_never_raises(reply: str) -> None:
    result = parse_merged(reply, TWO)
    assert result.keys() == TWO.keys()
    assert all(r.ok or r.failure in FAILURE_KINDS for r in result.values())
