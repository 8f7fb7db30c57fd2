"""A setup the provider refuses (a wrong or missing key, no permission, an unknown provider, the embedded
model's extra not installed): the first refusal stops every call to that model, every item that needed it
fails with the provider's whole message and the fix, and none passes (issue 12, items 5 and 16).

Against the scripted server answering 401 (and 403) to everything, through litellm's real HTTP path.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_judgeopt.llm import LLM, CallError
from pytest_judgeopt.spec import Model
from tests.conftest import human_from_prompt, make_records, server_model, spec_text
from tests.fake_llm import FakeLLMServer, Fault

RECORDS = make_records()
# OpenAI's own words for a wrong key: longer than any cut a summary line makes, so a cut shows
WRONG_KEY = ("Incorrect API key provided: sk-proj-****************************************xyz9. You can find your API "
             "key at https://platform.openai.com/account/api-keys.")
NO_PERMISSION = "Project `proj_abc` does not have access to model `fake-judge`; ask an owner of the organization for access."
EVERY_ITEM = """\
cases:
  - name: low
    inputs: {source: "Article 1.", summary: "Summary 1."}
    expect: {coherence: "<= 2"}
probes:
  - kind: pad
    criteria: coherence
    max_rise: 0.5
"""


def refusing(status: int, message: str) -> object:
    return lambda body: Fault("status", status=status, message=message)


def write(pytester: pytest.Pytester, model: object, extra: str = EVERY_ITEM, **spec_args: object) -> None:
    (pytester.path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    (pytester.path / "toy.judge.yaml").write_text(spec_text(model, extra=extra, **spec_args))  # type: ignore[arg-type]


def models_asked(server: FakeLLMServer) -> list[str]:
    return [body["model"] for body in server.chat_requests()]


@pytest.mark.parametrize(("status", "message"), [(401, WRONG_KEY), (403, NO_PERMISSION)])
def test_a_refused_key_stops_the_calls_fails_every_item_with_the_whole_message_and_the_fix(
        pytester: pytest.Pytester, fake_llm: FakeLLMServer, status: int, message: str) -> None:
    """Criterion items (one report-only), ::merged, ::compare, a case and a probe: one call per model refused."""
    fake_llm.responder = refusing(status, message)
    write(pytester, server_model(fake_llm))
    result = pytester.runpytest("--judge-cache=off", "--judge-compare-model=openai/other-judge", "-rA")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == 0 and outcomes.get("failed") == 6, outcomes
    # one call, then refused without a call (::compare stops at its configured side, before other-judge)
    assert models_asked(fake_llm) == ["fake-judge"]
    out = result.stdout.str()
    assert out.count(message) >= 6  # whole, in every item's failure
    assert "Fix: check the spec's model.api_key (the key it gives was refused), or choose another model with --judge-model" in out
    assert out.count("openai/fake-judge refused the run's calls after one, which every call to it would get: ") == 1
    assert "server" not in out.replace("fake-judge", "")  # never filed as a server error
    assert "sk-test-not-a-real-key" not in out


def test_a_report_only_criterion_does_not_pass_when_the_key_is_refused(pytester: pytest.Pytester,
                                                                      fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = refusing(401, WRONG_KEY)
    write(pytester, server_model(fake_llm), extra="interference: false\n")
    spec = pytester.path / "toy.judge.yaml"
    spec.write_text(spec.read_text().replace("min_rho: 0.5", "min_rho: null"))
    result = pytester.runpytest("--judge-cache=off")
    result.assert_outcomes(failed=2)
    assert len(fake_llm.chat_requests()) == 1


def test_a_refused_baseline_run_fails_the_baseline_item(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = human_from_prompt(RECORDS)
    write(pytester, server_model(fake_llm), extra="interference: false\n", min_rho=-1.0)
    pytester.runpytest("--judge-cache=off", "--judge-report=base").assert_outcomes(passed=2)
    fake_llm.reset()
    fake_llm.responder = refusing(401, WRONG_KEY)
    result = pytester.runpytest("--judge-cache=off", "--judge-baseline=base")
    result.assert_outcomes(failed=3)  # coherence, fluency, ::baseline
    assert len(fake_llm.chat_requests()) == 1
    assert WRONG_KEY in result.stdout.str()


def test_judge_optimize_stops_at_the_first_refusal(pytester: pytest.Pytester, fake_llm: FakeLLMServer) -> None:
    fake_llm.responder = refusing(401, WRONG_KEY)
    write(pytester, server_model(fake_llm), extra="")
    result = pytester.runpytest("--judge-cache=off", "--judge-optimize", "--judge-steps=1")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) == 0 and outcomes.get("failed") == 4, outcomes  # ::optimize, 2 criteria, ::merged
    assert len(fake_llm.chat_requests()) == 1
    out = result.stdout.str()
    assert WRONG_KEY in out and "Traceback" not in out


def test_a_missing_key_names_the_variable_to_set(pytester: pytest.Pytester, fake_llm: FakeLLMServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """No api_key and no OPENAI_API_KEY: the OpenAI client refuses before any request, which litellm reports as
    a server error (500) and would retry; it is a refused setup, with the variable to set."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    write(pytester, {"name": "openai/fake-judge", "api_base": fake_llm.base_url}, extra="interference: false\n")
    result = pytester.runpytest("--judge-cache=off", "-rA")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "auth: " in out and "Missing credentials. Please pass an `api_key`" in out
    assert "Fix: set OPENAI_API_KEY in the environment, or choose another model with --judge-model" in out
    assert "call_server" not in out and fake_llm.chat_requests() == []


def test_an_unknown_provider_says_how_to_write_the_model(pytester: pytest.Pytester) -> None:
    write(pytester, "gpt-nonexistent-judge", extra="interference: false\n")
    result = pytester.runpytest("--judge-cache=off", "-rA")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "provider: LLM Provider NOT provided. Pass in the LLM provider you are trying to call. You passed " \
           "model=gpt-nonexistent-judge" in out
    assert "Fix: write the model as provider/model (e.g. openai/gpt-4o-mini" in out
    assert "bad_request" not in out


def test_a_refusal_fails_every_later_call_to_that_model_without_a_request(fake_llm: FakeLLMServer) -> None:
    """At the client: of 20 overlapping calls only the first reaches the server; another model still answers."""
    fake_llm.responder = lambda body: (Fault("status", status=401, message=WRONG_KEY) if body["model"] == "fake-judge"
                                       else "4")
    model = Model.parse(server_model(fake_llm))
    other = Model.parse({**server_model(fake_llm), "name": "openai/other-judge"})
    with LLM(retries=3, backoff=0.01) as llm:

        async def many() -> list[object]:
            import asyncio

            return await asyncio.gather(*(llm.complete(model, [{"role": "user", "content": f"q{i}"}]) for i in range(20)),
                                        return_exceptions=True)

        errors = llm.run(many())
        assert all(isinstance(e, CallError) and e.kind == "auth" and e.refused for e in errors)
        assert all(WRONG_KEY in str(e) for e in errors)  # the provider's whole message, every time
        assert len(fake_llm.chat_requests()) == 1
        assert llm.usage["judge"].errors["auth"] == 20 and llm.usage["judge"].retries == 0
        reply = llm.run(llm.complete(other, [{"role": "user", "content": "q"}]))
        assert reply.choices[0].text == "4"


def test_a_missing_local_extra_fails_at_once_with_the_install_hint(tmp_path: Path) -> None:
    """llama_cpp hidden (``sys.modules['llama_cpp'] = None`` makes its import fail) in a fresh process: the embedded
    model's calls fail with the install hint on the first call, never retried as a connection error."""
    script = textwrap.dedent("""
        import sys
        sys.modules["llama_cpp"] = None
        import asyncio
        from pytest_judgeopt.llm import LLM, CallError
        from pytest_judgeopt.spec import Model

        slept = []
        async def sleep(seconds):
            slept.append(seconds)
        llm = LLM(retries=4)
        llm.sleep = sleep
        async def many():
            return await asyncio.gather(*(llm.complete(Model("local/smollm2"), [{"role": "user", "content": str(i)}])
                                          for i in range(5)), return_exceptions=True)
        errors = llm.run(many())
        llm.close()
        print(sorted({type(e).__name__ + ":" + e.kind for e in errors}))
        print(errors[0])
        print("retries", llm.usage["judge"].retries, "slept", len(slept))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    kinds, message, retries = done.stdout.splitlines()[-3:]
    assert kinds == "['CallError:missing_extra']"
    assert "pip install 'pytest-judgeopt[local]'" in message and "--judge-model" in message
    assert retries == "retries 0 slept 0"
