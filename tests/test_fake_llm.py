"""Tests for the fake OpenAI-compatible server that the rest of the suite and the benchmarks rely on."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.fake_llm import FakeLLMServer, Fault, Reply

MESSAGES = [
    {"role": "system", "content": "You grade answers from 1 to 5."},
    {"role": "user", "content": "Grade: the sky is green."},
]


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


def call(
    url: str, body: dict | None = None, *, timeout: float = 5.0, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """POST (or GET without a body) via urllib; HTTP error statuses are returned, not raised, to assert on them."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def chat(server: FakeLLMServer, timeout: float = 5.0, **fields: object) -> tuple[int, dict[str, str], bytes]:
    body = {"model": "judge", "messages": MESSAGES, **fields}
    return call(f"{server.base_url}/chat/completions", body, timeout=timeout)


def test_round_trip_shape_usage_and_n(server: FakeLLMServer) -> None:
    script = iter(["4", "two words"])
    server.responder = lambda body: next(script)

    status, headers, raw = chat(server, n=2, temperature=0.0)

    assert status == 200 and headers["content-type"] == "application/json"
    data = json.loads(raw)
    assert data["object"] == "chat.completion" and data["id"] and isinstance(data["created"], int)
    assert data["model"] == "judge"
    assert data["choices"] == [
        {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": "stop"}
        for i, text in enumerate(["4", "two words"])
    ]
    prompt_chars = sum(len(m["content"]) for m in MESSAGES)
    assert data["usage"] == {
        "prompt_tokens": -(-prompt_chars // 4),
        "completion_tokens": 1 + 3,
        "total_tokens": -(-prompt_chars // 4) + 4,
    }


def test_default_reply_path_without_prefix_models_and_404(server: FakeLLMServer) -> None:
    root = server.base_url.removesuffix("/v1")
    status, _, raw = call(f"{root}/chat/completions", {"model": "m", "messages": MESSAGES})
    assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"] == "3"

    status, _, raw = call(f"{server.base_url}/models")
    assert status == 200 and [m["id"] for m in json.loads(raw)["data"]] == ["fake"]

    status, _, raw = call(f"{server.base_url}/embeddings", {"input": "x"})
    assert status == 404 and "error" in json.loads(raw)


def test_logprobs_null_content_and_finish_reason(server: FakeLLMServer) -> None:
    server.responder = lambda body: Reply("4", logprobs=[[("4", -0.1), ("3", -2.5), ("5", -3.0)]])
    _, _, raw = chat(server, logprobs=True, top_logprobs=2)
    assert json.loads(raw)["choices"][0]["logprobs"] == {
        "content": [
            {
                "token": "4",
                "logprob": -0.1,
                "bytes": None,
                "top_logprobs": [
                    {"token": "4", "logprob": -0.1, "bytes": None},
                    {"token": "3", "logprob": -2.5, "bytes": None},
                ],
            }
        ]
    }

    server.responder = lambda body: Reply(None, finish_reason="length")
    choice = json.loads(chat(server, max_tokens=1)[2])["choices"][0]
    assert choice["message"]["content"] is None and choice["finish_reason"] == "length"


def test_status_fault_with_retry_after_is_consumed_once(server: FakeLLMServer) -> None:
    server.faults.append(Fault("status", status=429, retry_after=1.5))

    status, headers, raw = chat(server)
    assert status == 429 and headers["retry-after"] == "1.5"
    assert json.loads(raw)["error"]["code"] == 429

    assert chat(server)[0] == 200
    assert len(server.chat_requests()) == 2


def test_responder_can_return_a_fault(server: FakeLLMServer) -> None:
    server.responder = lambda body: Fault("status", status=503)
    status, headers, _ = chat(server)
    assert status == 503 and "retry-after" not in headers


def test_reset_fault_drops_the_connection_quietly(
    server: FakeLLMServer, capfd: pytest.CaptureFixture[str]
) -> None:
    server.faults.append(Fault("reset"))
    with pytest.raises(ConnectionError):
        chat(server)
    assert chat(server)[0] == 200
    assert capfd.readouterr().err == ""


def test_not_json_fault(server: FakeLLMServer) -> None:
    server.faults.append(Fault("not_json"))
    status, _, raw = chat(server)
    assert status == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(raw)


def test_empty_choices_fault(server: FakeLLMServer) -> None:
    server.faults.append(Fault("empty_choices"))
    status, _, raw = chat(server)
    assert status == 200 and json.loads(raw)["choices"] == []


def test_hang_times_out_client_then_answers_quietly(
    server: FakeLLMServer, capfd: pytest.CaptureFixture[str]
) -> None:
    server.faults += [Fault("hang", seconds=0.3), Fault("hang", seconds=0.4)]
    with pytest.raises(TimeoutError):
        chat(server, timeout=0.1)

    started = time.monotonic()
    status, _, raw = chat(server)
    assert status == 200 and json.loads(raw)["choices"][0]["message"]["content"] == "3"
    assert time.monotonic() - started >= 0.4
    # By now the first hang has ended and written to a socket the client had closed: no traceback.
    assert capfd.readouterr().err == ""


def test_stop_is_prompt_during_a_hang() -> None:
    server = FakeLLMServer().start()
    server.faults.append(Fault("hang", seconds=3600))
    errors: list[BaseException] = []

    def client() -> None:
        try:
            chat(server, timeout=30)
        except OSError as exc:
            errors.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    server.stop()
    thread.join(timeout=120)  # a guard against hanging the suite; the hang itself is an hour

    assert not thread.is_alive(), "stop() left the client waiting out the hang"
    assert len(errors) == 1 and isinstance(errors[0], ConnectionError)


def test_request_logging_and_reset(server: FakeLLMServer) -> None:
    server.faults.append(Fault("status"))
    chat(server, seed=7)
    body = {"model": "m", "messages": MESSAGES}
    call(f"{server.base_url}/chat/completions", body, headers={"Authorization": "Bearer sk-test"})
    call(f"{server.base_url}/models")

    assert [r["path"] for r in server.requests] == ["/v1/chat/completions", "/v1/chat/completions", "/v1/models"]
    assert server.requests[1]["headers"]["authorization"] == "Bearer sk-test"
    assert [b["model"] for b in server.chat_requests()] == ["judge", "m"]
    assert server.chat_requests()[0]["seed"] == 7

    server.faults.append(Fault("status"))
    server.reset()
    assert server.requests == [] and server.faults == [] and server.chat_requests() == []
    assert chat(server)[0] == 200


def test_max_in_flight_counts_overlapping_requests(server: FakeLLMServer) -> None:
    together = threading.Barrier(8, timeout=30)  # no answer until all 8 are inside the server at once

    def respond(body: dict) -> str:
        together.wait()
        return "3"

    server.responder = respond
    threads = [threading.Thread(target=chat, args=(server,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert server.max_in_flight == 8
    assert len(server.chat_requests()) == 8


# litellm's pydantic models trip a third-party UserWarning, which the project's filterwarnings=error would fail on.
@pytest.mark.filterwarnings("ignore:Items? .* using the `ReadOnly` qualifier:UserWarning")
def test_litellm_round_trip(server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch of the cost map on import
    litellm = pytest.importorskip("litellm")
    server.responder = lambda body: "5"

    response = litellm.completion(
        model="openai/fake", api_base=server.base_url, api_key="sk-test", messages=MESSAGES, temperature=0.0
    )

    assert response.choices[0].message.content == "5"
    [body] = server.chat_requests()
    assert body["model"] == "fake" and body["messages"] == MESSAGES
    assert server.requests[0]["headers"]["authorization"] == "Bearer sk-test"


def judge_body(summary: str, criteria: list[str]) -> dict:
    """A judge request as pytest-judgeopt renders it: one criterion (separate) or several (merged)."""
    asked = (f"Criterion: {criteria[0]}\nInstruction: rate it." if len(criteria) == 1
             else "Criteria:\n" + "\n".join(f"- {c}: rate it." for c in criteria))
    return {"messages": [{"role": "user", "content": f"<source>\ns\n</source>\n\n<summary>\n{summary}\n</summary>\n\n{asked}"}]}


def test_by_content_answers_by_the_first_matching_rule_in_the_format_asked() -> None:
    from tests.fake_llm import by_content

    respond = by_content([("jumbled", {"coherence": 1}), ("fine", 5)], default=3)
    assert respond(judge_body("a jumbled text", ["coherence"])) == "coherence: 1"
    assert respond(judge_body("a jumbled text", ["fluency"])) == "fluency: 3"
    assert json.loads(respond(judge_body("a fine text", ["coherence", "fluency"]))) == {"coherence": 5, "fluency": 5}
    assert respond(judge_body("other", ["coherence"])) == "coherence: 3"


def test_noisy_answers_differ_for_the_same_prompt_and_stay_in_the_scale() -> None:
    from tests.fake_llm import noisy

    respond = noisy(seed=1)
    answers = [respond(judge_body("same", ["coherence"])) for _ in range(40)]
    scores = {int(a.split(": ")[1]) for a in answers}
    assert len(scores) > 1 and scores <= {1, 2, 3, 4, 5}
    again = noisy(seed=1)
    assert [again(judge_body("same", ["coherence"])) for _ in range(40)] == answers  # seeded


def test_length_rising_scores_rise_with_the_length_of_the_tagged_text() -> None:
    from tests.fake_llm import length_rising

    respond = length_rising(chars_per_point=10)
    scores = [int(respond(judge_body("x" * n, ["relevance"])).split(": ")[1]) for n in (0, 10, 25, 1000)]
    assert scores == [1, 2, 3, 5]
