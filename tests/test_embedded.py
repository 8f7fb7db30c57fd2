"""The real path on the embedded SmolLM2 model: slow (seconds per test), run in CI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "summeval" / "summeval.judge.yaml"

pytestmark = pytest.mark.embedded


def test_example_judged_end_to_end_on_the_embedded_model(tmp_path: Path) -> None:
    from pytest_judgeopt.cache import Cache
    from pytest_judgeopt.llm import LLM
    from pytest_judgeopt.session import Session

    session = Session(LLM(cache=Cache(tmp_path)), sample=1)
    try:
        results = session.evaluate(EXAMPLE)
        usage = session.llm.total()
    finally:
        session.close()
    assert set(results) == {"coherence", "consistency", "fluency", "relevance"}
    assert session.evaluations[0]["model"] == "local/smollm2"
    n = results["coherence"].n
    assert n == 8  # one document of the test split, 8 summaries
    assert usage.calls == 4 * n and usage.prompt_tokens > 4 * n * 100
    for result in results.values():
        assert len(result.judgments) == n
        for judgment in result.judgments:
            assert judgment.reply is not None  # a real model answered every call
            assert (judgment.score is None) == (judgment.failure is not None)
            if judgment.score is not None:
                assert 1 <= judgment.score <= 5
    assert any(j.score is not None for r in results.values() for j in r.judgments)

    again = Session(LLM(cache=Cache(tmp_path)), sample=1)
    try:
        again.evaluate(EXAMPLE)
        assert again.llm.total().calls == 0
    finally:
        again.close()


def test_overlapping_calls_are_serialised(tmp_path: Path) -> None:
    """Two overlapping calls into one llama.cpp model abort the process; the lock must prevent it."""
    script = textwrap.dedent("""
        import asyncio, threading
        from pytest_judgeopt.llm import LLM
        from pytest_judgeopt.local_model import generate
        from pytest_judgeopt.spec import Model

        messages = [{"role": "user", "content": "Say a number from 1 to 5."}]
        threads = [threading.Thread(target=generate, args=(messages, {"max_tokens": 4})) for _ in range(3)]
        for t in threads:
            t.start()
        llm = LLM(concurrency=8)
        async def many():
            return await asyncio.gather(*[llm.complete(Model("local/smollm2"), messages, max_tokens=4, seed=i)
                                          for i in range(6)])
        replies = llm.run(many())
        for t in threads:
            t.join()
        llm.close()
        print("calls", sum(1 for r in replies if r.choices[0].text is not None))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "calls 6" in done.stdout


def test_interference_check_on_the_embedded_model(tmp_path: Path) -> None:
    """Both prompt shapes on the real model: the same samples, one merged call per sample against four."""
    from pytest_judgeopt.cache import Cache
    from pytest_judgeopt.llm import LLM
    from pytest_judgeopt.session import Session

    session = Session(LLM(cache=Cache(tmp_path)), sample=1)
    try:
        result = session.interference(EXAMPLE)
    finally:
        session.close()
    names = {"coherence", "consistency", "fluency", "relevance"}
    assert set(result.criteria) == set(result.separate) == set(result.merged) == names
    n = result.records
    assert n == 8  # one document of the test split
    for name in names:
        separate, merged = result.separate[name], result.merged[name]
        assert [j.record_id for j in separate.judgments] == [j.record_id for j in merged.judgments]
        assert len(separate.judgments) == n and merged.shape == "merged"
        assert all(j.reply is not None for j in merged.judgments)  # a real model answered every merged call
        c = result.criteria[name]
        assert c.judged == n and c.n <= n
        assert c.verdict == verdict_from_numbers(c, separate, result.settings.max_drop), (c.verdict, c)
        assert (c.diff is None) or abs(c.diff - (c.merged - c.separate)) < 1e-9
    assert result.usage_merged.answered == n and result.usage_separate.answered == 4 * n
    assert 0 < result.usage_merged.prompt_tokens < result.usage_separate.prompt_tokens
    (recorded,) = session.interferences
    assert {k: v for k, v in recorded.items() if k != "predictions"} == result.to_json()
    assert len(recorded["predictions"]) == 4 * n  # the merged judgments, one row per sample and criterion


def verdict_from_numbers(c: Any, separate: Any, max_drop: float) -> str:
    """The verdict the README's rules give for the numbers the check reports, worked out here again:
    whatever a weak model answers, the verdict must be the one its numbers call for."""
    failed, before = sum(c.failures_merged.values()), sum(c.failures_separate.values())
    merging_fails_judgments = failed / c.judged > separate.criterion.max_parse_failure_rate and failed > before
    if separate.rho is None:
        kind = "no baseline"
    elif c.diff is None:
        return "undefined"
    elif -c.diff <= max_drop:
        kind = "pass"
    elif c.low is None or c.high is None:
        return "undefined"
    elif c.high < 0:
        return "fail"
    else:
        kind = "inconclusive"
    return "fail" if merging_fails_judgments else kind


def test_one_optimization_step_on_the_embedded_model(tmp_path: Path) -> None:
    """The optimizer's real path on a real (weak) model: every role answers, the loop, gate and lock work."""
    import yaml

    from pytest_judgeopt.cache import Cache
    from pytest_judgeopt.llm import LLM
    from pytest_judgeopt.lockfile import read_lock
    from pytest_judgeopt.session import Session

    spec = yaml.safe_load(EXAMPLE.read_text())
    spec["dataset"]["path"] = str(EXAMPLE.parent / spec["dataset"]["path"])
    spec["criteria"] = {name: spec["criteria"][name] for name in ("coherence", "fluency")}
    spec["optimize"] = {"mode": "SSS", "steps": 1, "batch_size": 1, "max_tokens": 32, "max_instruction_chars": 300}
    path = tmp_path / "small.judge.yaml"
    path.write_text(yaml.safe_dump(spec))
    session = Session(LLM(cache=Cache(tmp_path / "cache")), sample=1, state_dir=tmp_path / "state")
    try:
        result = session.optimize(path, write=True)
        usage = {role: dict(u) for role, u in result.usage.items()}
    finally:
        session.close()
    assert result.steps_run == 1 and result.stopped is None
    (step,) = result.history
    proposed = any(step.proposals.values())
    expected = {role: n for role, n in result.planned.items() if role != "gate" or proposed}
    assert step.calls == expected  # judge 1, loss 2, gradient 2, optimizer 2, and gate 8 when a rewrite came back
    assert {"judge", "loss", "gradient", "optimizer", "gate"} <= set(usage)
    for name, outcome in result.outcomes.items():
        assert outcome.final == (step.proposals[name] if name in step.accepted else outcome.initial)
        assert name in step.accepted or step.rejected_reasons.get(name)
    lock = read_lock(path)
    assert lock is not None and lock.instructions == result.instructions and not lock.edited


def test_a_run_on_the_embedded_model_ends_without_resource_warnings(tmp_path: Path) -> None:
    """issue 12.8: after the main job pytest printed two "Exception ignored ... ResourceWarning: unclosed file
    /dev/null" lines: llama-cpp-python's module-level /dev/null files, left open to interpreter shutdown."""
    rows = [{"id": f"r{i}", "source": f"Article {i}.", "summary": f"Summary {i}.", "scores": {"coherence": 1 + i % 5}}
            for i in range(3)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tiny.judge.yaml").write_text(textwrap.dedent("""\
        model: local/smollm2
        dataset: {path: data.jsonl, inputs: {source: source, summary: summary}, scores: scores}
        split: {train: 0.0, val: 0.0, test: 1.0}
        judge: {max_tokens: 4}
        criteria:
          coherence: {instruction: Rate the coherence., scale: [1, 5]}
    """))
    (tmp_path / "pytest.ini").write_text("[pytest]\nfilterwarnings = error\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert "1 passed" in done.stdout or "1 failed" in done.stdout, done.stdout[-2000:] + done.stderr[-2000:]
    assert "ResourceWarning" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr[-2000:]
