"""Shared fixtures: a scripted OpenAI-compatible server on 127.0.0.1, and small judge projects."""

from __future__ import annotations

import importlib
import json
import os
import re
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_judgeopt.llm import import_litellm
from tests.fake_llm import FakeLLMServer

CRITERIA = ("coherence", "fluency")


@pytest.fixture
def fake_llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


def make_records(n_groups: int = 6, per_group: int = 4, criteria: tuple[str, ...] = CRITERIA) -> list[dict[str, Any]]:
    """Records whose human scores vary within and across groups, deterministically."""
    records = []
    for g in range(n_groups):
        for i in range(per_group):
            scores = {c: float(1 + (g * 7 + i * 3 + k * 2) % 5) for k, c in enumerate(criteria)}
            records.append({"id": f"d{g}-s{i}", "group": f"d{g}", "source": f"Article {g}. Facts {g * 3}.",
                            "summary": f"Summary {i} of article {g}.", "scores": scores})
    return records


def spec_text(model: str | dict[str, Any] | None, *, criteria: tuple[str, ...] = CRITERIA, min_rho: float = 0.5,
              extra: str = "", data: str = "data.jsonl") -> str:
    model_line = "" if model is None else f"model: {json.dumps(model)}\n"
    crit = "".join(f"  {c}:\n    instruction: Rate the {c} from 1 to 5.\n    scale: [1, 5]\n    min_rho: {min_rho}\n"
                   for c in criteria)
    return (f"name: toy\n{model_line}dataset:\n  path: {data}\n  group: group\n"
            f"  inputs: {{source: source, summary: summary}}\n  scores: scores\n"
            f"split: {{train: 0.25, val: 0.25, test: 0.5, seed: 1}}\n{textwrap.dedent(extra)}criteria:\n{crit}")


def server_model(server: FakeLLMServer) -> dict[str, Any]:
    return {"name": "openai/fake-judge", "api_base": server.base_url, "api_key": "sk-test-not-a-real-key"}


@pytest.fixture
def make_project(tmp_path: Path) -> Callable[..., Path]:
    """Write a spec and its data into a folder; returns the spec's path."""

    def make(model: str | dict[str, Any] | None, *, records: list[dict[str, Any]] | None = None,
             folder: Path | None = None, name: str = "toy.judge.yaml", **spec_args: Any) -> Path:
        root = folder or tmp_path
        root.mkdir(parents=True, exist_ok=True)
        rows = make_records() if records is None else records
        (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        spec = root / name
        spec.write_text(spec_text(model, **spec_args))
        return spec

    return make


def human_from_prompt(records: list[dict[str, Any]]) -> Callable[[dict[str, Any]], str]:
    """A responder that knows the human scores: it answers each criterion asked with the true score."""
    by_summary = {r["summary"]: r for r in records}

    def respond(body: dict[str, Any]) -> str:
        prompt = body["messages"][-1]["content"]
        summary = re.search(r"<summary>\n(.*?)\n</summary>", prompt, re.S).group(1)
        record = by_summary[summary]
        asked = [c for c in record["scores"] if re.search(rf"(^|- |Criterion: ){c}\b", prompt, re.M)]
        if len(asked) == 1:
            return f"{asked[0]}: {record['scores'][asked[0]]:g}"
        return json.dumps({c: record["scores"][c] for c in asked})

    return respond


# Heavy modules the in-process pytester runs use, imported once here: pytester restores
# sys.modules after each inner run, numpy cannot be imported twice in one process, and
# hypothesis' pytest plugin would re-import (and assert-rewrite) it in every inner run, seconds each.
# scikit-learn and krippendorff (agreement.py) hold compiled parts too: loaded once, like numpy.
for _module in ("hypothesis", "numpy", "scipy.stats", "sklearn.metrics", "krippendorff"):
    importlib.import_module(_module)
import_litellm()


@pytest.fixture(autouse=True)
def not_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """pytest prints failure messages in full in its short summary when CI is set, which changes what
    inner pytester runs print; the tests count messages, so inner runs behave the same everywhere."""
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("BUILD_NUMBER", raising=False)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``posix`` (os.fork, a pty, SIGKILL) are skipped where the OS has none of them (Windows): the
    rest of the suite runs there as anywhere."""
    if os.name == "posix":
        return
    skip = pytest.mark.skip(reason="needs os.fork, a pseudo-terminal or SIGKILL (POSIX only)")
    for item in items:
        if item.get_closest_marker("posix") is not None:
            item.add_marker(skip)
