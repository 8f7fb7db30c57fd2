"""Probability-weighted scores: at the tokens the parser read the score from, over every token of the number."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_judgeopt.parse import number_value, parse_merged, parse_score
from pytest_judgeopt.weighting import Weighted, score_span, weighted_score

FIVE = (1.0, 5.0)
TEN = (1.0, 10.0)


def lp(p: float) -> float:
    return math.log(p)


def sure(*texts: str) -> list[list[tuple[str, float]]]:
    """Tokens the model was certain of (logprob 0, no alternatives), as forced text comes back."""
    return [[(t, 0.0)] for t in texts]


def read_score(scale: tuple[float, float], criterion: str | None = None):
    return lambda text: parse_score(text, scale, criterion).score


def weigh(tokens: list[list[tuple[str, float]]], scale: tuple[float, float], criterion: str | None = None) -> Weighted | None:
    reply = "".join(position[0][0] for position in tokens)
    parsed = parse_score(reply, scale, criterion)
    assert parsed.score is not None, parsed
    span = score_span(reply, parsed.score, scale, read_score(scale, criterion))
    assert span is not None
    return weighted_score(tokens, reply, span, scale)


def test_single_digit_is_the_expectation_over_its_alternatives() -> None:
    tokens = [[("4", lp(0.6)), ("5", lp(0.3)), ("3", lp(0.1))]]
    assert weigh(tokens, FIVE) == Weighted(pytest.approx(4.2), pytest.approx(0.0, abs=1e-12))


def test_a_decimal_number_is_weighted_over_all_its_tokens() -> None:
    """"4.5" used to come out as 4.1 (its first digit's alternatives only); every token now counts."""
    tokens = [[("4", lp(0.6)), ("5", lp(0.3)), ("3", lp(0.1))],
              [(".", lp(0.8)), ("}", lp(0.2))],
              [("5", lp(0.7)), ("0", lp(0.2)), ("8", lp(0.1))]]
    # 5: .3, 3: .1, 4 (ended after "4"): .6*.2, 4.0: .6*.8*.2, 4.8: .6*.8*.1, 4.5: .6*.8*.7
    expected = .3 * 5 + .1 * 3 + .12 * 4 + .096 * 4.0 + .048 * 4.8 + .336 * 4.5
    result = weigh(tokens, FIVE)
    assert result is not None and result.score == pytest.approx(expected) and result.score > 4.3


def test_a_two_token_integer_weighs_its_second_token_against_ending_there() -> None:
    tokens = [*sure('{"', "coherence", '":', " "), [("1", lp(0.5)), ("9", lp(0.3)), ("8", lp(0.2))],
              [("0", lp(0.7)), ("}", lp(0.3))], *sure("}")]
    result = weigh(tokens, TEN, "coherence")
    # 10: .5*.7, 1: .5*.3, 9: .3, 8: .2
    assert result is not None and result.score == pytest.approx(.35 * 10 + .15 * 1 + .3 * 9 + .2 * 8)


def test_the_score_is_weighted_where_it_was_read_never_in_the_scale_text() -> None:
    """"On a 1-5 scale, my score: 5": the 5 of "1-5" is the scale, the last 5 is the score."""
    tokens = [*sure("On", " a", " 1", "-"), [("5", lp(0.9)), ("4", lp(0.1))], *sure(" scale", ",", " my", " score", ":"),
              [(" 5", lp(0.5)), (" 4", lp(0.3)), (" 3", lp(0.1)), (" I", lp(0.05))]]
    result = weigh(tokens, FIVE)
    assert result is not None
    assert result.score == pytest.approx((0.5 * 5 + 0.3 * 4 + 0.1 * 3) / 0.9)
    assert result.outside == pytest.approx(0.1)  # " I" and what the provider did not show


def test_mass_outside_the_scale_is_reported_and_left_out() -> None:
    tokens = [[("3", lp(0.5)), ("7", lp(0.2)), ("0", lp(0.1)), ("x", lp(0.1)), ("4", lp(0.1))]]
    result = weigh(tokens, FIVE)
    assert result is not None
    assert result.score == pytest.approx((0.5 * 3 + 0.1 * 4) / 0.6)
    assert result.outside == pytest.approx(0.4)


def test_a_token_that_is_no_ascii_digit_is_text_not_a_crash() -> None:
    """A logprob token like "²" crashed the item through int("²"); it is text to the parser and the weighting alike."""
    tokens = [[("4", lp(0.5)), ("²", lp(0.3)), ("٣", lp(0.1)), ("5", lp(0.1))]]
    result = weigh(tokens, FIVE)
    assert result is not None and result.score == pytest.approx((0.5 * 4 + 0.1 * 5) / 0.6)
    assert number_value("²") is None and number_value("٣") is None
    assert parse_score("²", FIVE).failure is not None


def test_merged_reply_weighs_each_criterion_at_its_own_value() -> None:
    tokens = [*sure('{"', "coherence", '":', " "), [("4", lp(0.5)), ("5", lp(0.5))],
              *sure(",", ' "', "fluency", '":', " "), [("2", lp(0.8)), ("1", lp(0.2))], *sure("}")]
    reply = "".join(t[0][0] for t in tokens)
    scales = {"coherence": FIVE, "fluency": FIVE}
    for name, expected in (("coherence", 4.5), ("fluency", 1.8)):
        parsed = parse_merged(reply, scales)[name]
        span = score_span(reply, parsed.score, FIVE, lambda text, name=name: parse_merged(text, scales)[name].score)
        assert span is not None
        result = weighted_score(tokens, reply, span, FIVE)
        assert result is not None and result.score == pytest.approx(expected)


def test_no_weighting_when_the_tokens_do_not_spell_the_reply_or_nothing_is_in_scale() -> None:
    assert weighted_score(sure("4"), "5", (0, 1), FIVE) is None
    assert weighted_score([[("4", -math.inf), ("9", lp(0.5))]], "4", (0, 1), FIVE) is None


def test_score_span_finds_no_place_for_a_number_word() -> None:
    assert score_span("four", 4.0, FIVE, read_score(FIVE)) is None
    assert score_span("Score: 4/5", 4.0, FIVE, read_score(FIVE)) == (7, 8)


@given(st.lists(st.tuples(st.sampled_from(["0", "1", "2", "3", "4", "5", "6", "9", "²", " ", ".", "}", "x"]),
                          st.floats(max_value=0.0, allow_nan=False)), min_size=1, max_size=6),
       st.sampled_from(["1", "3", "5"]))
def test_weighted_score_stays_in_scale(alternatives: list[tuple[str, float]], chosen: str) -> None:
    tokens = [[(chosen, lp(0.5)), *alternatives]]
    result = weighted_score(tokens, chosen, (0, 1), FIVE)
    assert result is not None  # the chosen in-scale digit always counts
    assert FIVE[0] - 1e-9 <= result.score <= FIVE[1] + 1e-9
    assert 0.0 <= result.outside <= 1.0


def test_a_superscript_digit_among_the_logprobs_of_a_real_reply_is_no_crash(pytester: pytest.Pytester) -> None:
    """Through the whole path (the scripted server, litellm, the judge): a reply with a "²" token before its score
    (and among the score's alternatives) crashed the item with int('²'); it is weighted over ASCII digits only."""
    import json

    from tests.conftest import make_records, server_model, spec_text
    from tests.fake_llm import FakeLLMServer, Reply

    records = make_records()
    reply = Reply("Note² Score: 4", logprobs=[[("Note", 0.0)], [("²", 0.0)], [(" Score", 0.0)], [(":", 0.0)],
                                             [(" 4", lp(0.5)), (" ²", lp(0.3)), (" 5", lp(0.2))]])
    with FakeLLMServer(lambda body: reply) as server:
        (pytester.path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        (pytester.path / "toy.judge.yaml").write_text(
            spec_text(server_model(server), criteria=("coherence",), min_rho=-1.0,
                      extra="judge: {logprobs: true, structured: false}\ninterference: false\n"))
        result = pytester.runpytest("--judge-cache=off", "--judge-report=out")
    out = result.stdout.str()
    assert "Traceback" not in out and "ValueError" not in out
    rows = [json.loads(line) for line in (pytester.path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert rows and all(r["judge"] == pytest.approx((0.5 * 4 + 0.2 * 5) / 0.7) and r["scoring"] == "weighted"
                        for r in rows)
