"""Calls decoded together on the embedded model: how they are grouped, how the queue hands them over, and (on
the real model, marked embedded) that replies decoded side by side are the replies each call gets alone."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_judgeopt import local_model
from pytest_judgeopt.local_decoding import Request, groups, unshared

# -- grouping (no model) -------------------------------------------------------------------------------------


def request(prompt: list[int], n: int = 1, max_tokens: int = 10) -> Request:
    return Request(tuple(prompt), max_tokens=max_tokens, n=n)


def test_a_trie_counts_the_tokens_no_earlier_prompt_holds_at_the_same_place() -> None:
    trie: dict[int, Any] = {}
    assert unshared(trie, [1, 2, 3], add=True) == 3
    assert unshared(trie, [1, 2, 4, 5], add=False) == 2
    assert unshared(trie, [1, 2, 4, 5], add=True) == 2
    assert unshared(trie, [1, 2, 4, 5, 6], add=False) == 1
    assert unshared(trie, [2, 1], add=False) == 2  # the same tokens at other places are not shared
    assert unshared(trie, [1, 2], add=False) == 0


def test_groups_keep_the_order_and_count_a_shared_prefix_once() -> None:
    prefix = list(range(100))
    calls = [request([*prefix, 1000 + i]) for i in range(5)]
    # 100 shared + 5 own tokens + 5 x 10 reply tokens = 155 cells: one group in 160, two in 150
    assert list(groups(calls, held=0, positions=160, sequences=16)) == [[0, 1, 2, 3, 4]]
    assert list(groups(calls, held=0, positions=150, sequences=16)) == [[0, 1, 2, 3], [4]]
    assert list(groups(calls, held=10, positions=160, sequences=16)) == [[0, 1, 2, 3], [4]]  # held cells count


def test_groups_hold_at_most_the_sequences_and_count_each_of_a_calls_n_replies() -> None:
    calls = [request([1, 2]), request([1, 3], n=3), request([1, 4]), request([1, 5], n=2)]
    assert list(groups(calls, held=0, positions=4096, sequences=4)) == [[0, 1], [2, 3]]
    assert list(groups(calls, held=0, positions=4096, sequences=16)) == [[0, 1, 2, 3]]


def test_a_call_too_big_for_the_cache_alone_is_a_group_of_its_own() -> None:
    calls = [request([1]), request(list(range(50)), max_tokens=100), request([2])]
    assert list(groups(calls, held=0, positions=64, sequences=16)) == [[0], [1], [2]]


def test_a_judge_schemas_replies_take_the_cells_of_its_longest_reply_not_max_tokens() -> None:
    from pytest_judgeopt.structured import longest_reply

    schema = {"type": "object", "properties": {"coherence": {"type": "integer", "enum": [1, 2, 3, 4, 5]}},
              "required": ["coherence"], "additionalProperties": False}
    assert Request((1,), schema, max_tokens=500).budget() == len(longest_reply(schema)) < 500
    assert Request((1,), {"type": "array"}, max_tokens=500).budget() == 500  # decoded whole: max_tokens


# -- the queue of one event loop (a stand-in for the model: the queue is what is tested) -------------------------


def answer(text: str) -> dict[str, Any]:
    return {"choices": [{"message": {"content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1}}


@pytest.fixture
def handler() -> Any:
    from pytest_judgeopt.llm import import_litellm

    return local_model.make_handler(import_litellm())


@pytest.fixture
def model_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    """The calls each generate_many got, by their user message; each answers with its message."""
    seen: list[list[str]] = []

    def generate_many(calls: list[tuple[list[dict[str, str]], dict[str, Any]]]) -> list[Any]:
        texts = [messages[-1]["content"] for messages, _ in calls]
        seen.append(texts)
        return [ValueError(f"refused {t}") if t.startswith("bad") else answer(t) for t in texts]

    monkeypatch.setattr(local_model, "generate_many", generate_many)
    yield seen


def ask(handler: Any, text: str) -> Any:
    return handler.acompletion("local/smollm2", [{"role": "user", "content": text}])


def test_calls_sent_together_are_handed_to_the_model_together_in_their_order(handler: Any,
                                                                           model_calls: list[list[str]]) -> None:
    async def main() -> list[Any]:
        return await asyncio.gather(*(ask(handler, f"q{i}") for i in range(8)))

    replies = asyncio.run(main())
    assert [r.choices[0].message.content for r in replies] == [f"q{i}" for i in range(8)]
    assert model_calls == [[f"q{i}" for i in range(8)]]


def test_calls_that_come_while_the_model_works_are_the_next_group(handler: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    started, release = threading.Event(), threading.Event()

    def generate_many(calls: list[tuple[list[dict[str, str]], dict[str, Any]]]) -> list[Any]:
        seen.append([messages[-1]["content"] for messages, _ in calls])
        started.set()
        release.wait(10)
        return [answer(messages[-1]["content"]) for messages, _ in calls]

    monkeypatch.setattr(local_model, "generate_many", generate_many)

    async def main() -> list[Any]:
        first = [asyncio.ensure_future(ask(handler, f"a{i}")) for i in range(2)]
        await asyncio.to_thread(started.wait, 10)
        later = [asyncio.ensure_future(ask(handler, f"b{i}")) for i in range(3)]
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(*first, *later)

    replies = asyncio.run(main())
    assert [r.choices[0].message.content for r in replies] == ["a0", "a1", "b0", "b1", "b2"]
    assert seen == [["a0", "a1"], ["b0", "b1", "b2"]]


def test_a_call_cancelled_while_it_waits_is_not_decoded(handler: Any, model_calls: list[list[str]]) -> None:
    async def main() -> list[Any]:
        tasks = [asyncio.ensure_future(ask(handler, f"q{i}")) for i in range(3)]
        await asyncio.sleep(0)  # each call is in the queue
        tasks[1].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    replies = asyncio.run(main())
    assert isinstance(replies[1], asyncio.CancelledError)
    assert [r.choices[0].message.content for r in (replies[0], replies[2])] == ["q0", "q2"]
    assert model_calls == [["q0", "q2"]]


def test_one_calls_error_is_that_calls_and_a_failed_group_fails_each_call(handler: Any, model_calls: list[list[str]],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    async def main(texts: list[str]) -> list[Any]:
        return await asyncio.gather(*(ask(handler, t) for t in texts), return_exceptions=True)

    first = asyncio.run(main(["q0", "bad1", "q2"]))
    assert first[0].choices[0].message.content == "q0" and first[2].choices[0].message.content == "q2"
    assert isinstance(first[1], ValueError) and str(first[1]) == "refused bad1"

    def broken(calls: list[Any]) -> list[Any]:
        raise RuntimeError("llama_decode returned -1")

    monkeypatch.setattr(local_model, "generate_many", broken)
    second = asyncio.run(main(["q3", "q4"]))
    assert [str(e) for e in second] == ["llama_decode returned -1"] * 2


# -- on the real model ---------------------------------------------------------------------------------------

SCHEMA = {"type": "object", "properties": {}, "required": [], "additionalProperties": False}
CRITERIA = ("coherence", "consistency", "fluency", "relevance")


def judge_format(*names: str) -> dict[str, Any]:
    properties = {name: {"type": "integer", "enum": [1, 2, 3, 4, 5]} for name in names}
    schema = {**SCHEMA, "properties": properties, "required": list(names)}
    return {"type": "json_schema", "json_schema": {"name": "judgment", "schema": schema, "strict": True}}


def judge_calls() -> list[tuple[list[dict[str, str]], dict[str, Any]]]:
    """A sample's calls as the judge sends them: one per criterion, then the merged one, on one source and summary;
    then a free-text call and one with two seeded replies on another text."""
    source = ("The city council voted on Tuesday to extend the library's opening hours on weekends, after a "
              "petition signed by two thousand residents. The change starts next month and costs about "
              "forty thousand a year, paid from the culture budget. ") * 3
    summary = "The council extended the library's weekend hours after a petition; it starts next month."
    system = {"role": "system", "content": "You are a careful, strict evaluator."}
    calls = []
    for names in [(name,) for name in CRITERIA] + [CRITERIA]:
        asked = "\n".join(f"- {name}: rate the {name} of the summary from 1 to 5." for name in names)
        user = f"<source>\n{source}\n</source>\n\n<summary>\n{summary}\n</summary>\n\n{asked}\n\nAnswer with JSON."
        calls.append(([system, {"role": "user", "content": user}],
                      {"temperature": 0.0, "response_format": judge_format(*names), "logprobs": True, "top_logprobs": 5}))
    calls.append(([{"role": "user", "content": "Name one colour."}], {"temperature": 0.0, "max_tokens": 6}))
    calls.append(([{"role": "user", "content": "Say a number."}], {"temperature": 1.0, "seed": 7, "n": 2, "max_tokens": 4}))
    return calls


def decoded_alone(calls: list[tuple[list[dict[str, str]], dict[str, Any]]]) -> tuple[list[dict[str, Any]], int]:
    engine = local_model.load()
    out = []
    before = engine.evaluated
    for messages, params in calls:
        engine.forget()  # nothing held: each call from its first token
        out.append(local_model.generate(messages, params))
    return out, engine.evaluated - before


@pytest.mark.embedded
def test_calls_decoded_together_get_the_replies_they_get_alone_and_share_their_prefix() -> None:
    calls = judge_calls()
    alone, evaluated_alone = decoded_alone(calls)
    engine = local_model.load()
    engine.forget()
    before = engine.evaluated
    together = local_model.generate_many(calls)
    evaluated_together = engine.evaluated - before
    # the five judge calls share source and summary: evaluated once, not five times
    assert evaluated_together < 0.5 * evaluated_alone, (evaluated_together, evaluated_alone)
    for (_, params), one, both in zip(calls, alone, together, strict=True):
        assert isinstance(both, dict)
        assert both["usage"]["prompt_tokens"] == one["usage"]["prompt_tokens"]
        assert len(both["choices"]) == len(one["choices"]) == int(params.get("n") or 1)
        if "response_format" not in params:
            continue
        (a,), (b,) = one["choices"], both["choices"]
        assert list(json.loads(b["message"]["content"])) == list(params["response_format"]["json_schema"]["schema"]["properties"])
        # the same model on the same tokens: batches change the float sums a little, never the distribution
        values = [(p, q) for p, q in zip(a["logprobs"], b["logprobs"], strict=True) if len(p) > 1]
        for p, q in values:
            assert abs(p[0][1] - q[0][1]) < 0.5
            if p[0][1] - max(lp for _, lp in p[1:]) > 0.5:  # no near tie: the same value is chosen
                assert p[0][0] == q[0][0]


@pytest.mark.embedded
def test_more_calls_than_sequences_and_a_prompt_longer_than_the_context() -> None:
    """The calls beyond one group are decoded in the next; a prompt the context cannot hold fails alone."""
    calls = [([{"role": "user", "content": f"Say the number {i}."}], {"temperature": 0.0, "max_tokens": 3})
             for i in range(local_model.SEQUENCES + 3)]
    calls.insert(5, ([{"role": "user", "content": "word " * (local_model.CONTEXT_TOKENS + 10)}], {"max_tokens": 3}))
    out = local_model.generate_many(calls)
    failed = out.pop(5)
    assert isinstance(failed, RuntimeError) and "the embedded model holds 4096" in str(failed)
    assert all(isinstance(o, dict) and o["choices"][0]["message"]["content"] is not None for o in out)
    alone = local_model.generate(*calls[0])
    assert alone["usage"]["prompt_tokens"] == out[0]["usage"]["prompt_tokens"]


@pytest.mark.embedded
def test_a_greedy_value_the_grammar_forbids_is_drawn_from_the_ones_it_allows() -> None:
    """The model's first choice after "Answer 1 or 2" is not 7, 8 or 9: the grammar's pass over the vocabulary
    picks the best allowed value, whose logprob is below the model's first choice."""
    schema = {**SCHEMA, "properties": {"score": {"type": "integer", "enum": [7, 8, 9]}}, "required": ["score"]}
    messages = [{"role": "user", "content": "Is the sky blue? Answer 1 for yes or 2 for no, as JSON."}]
    out = local_model.generate(messages, {"temperature": 0.0, "logprobs": True, "top_logprobs": 5,
                                          "response_format": {"type": "json_schema", "json_schema": {"schema": schema}}})
    (choice,) = out["choices"]
    assert json.loads(choice["message"]["content"])["score"] in (7, 8, 9)
    (value,) = [p for p in choice["logprobs"] if len(p) > 1]
    assert value[0][1] < max(lp for _, lp in value[1:])
