"""A judging session: each spec and its data loaded once, one model client, every result kept.

The pytest layer and Python scripts drive the same object, so a test using the ``judge``
fixture, a regression item and a script share loading, the answer cache and the results.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .defaults import BUILTIN_METRICS
from .data import Dataset, Loader, Splits, load_dataset, sample_groups, split_dataset
from .judge import CriterionResult, Judged, assess, judge_records
from .llm import LLM
from .local_model import MODEL_NAME as EMBEDDED_MODEL
from .spec import Model, Spec, SpecError, load_spec

SPLITS = ("train", "val", "test")
Metric = Callable[[Any, Any], "float | None"]


@dataclass(frozen=True)
class Loaded:
    spec: Spec
    dataset: Dataset
    splits: Splits


class Session:
    def __init__(self, llm: LLM | None = None, *, model_override: str | None = None, default_model: str | None = None,
                 sample: int | None = None, loader: Loader | None = None, metrics: Mapping[str, Metric | None] | None = None,
                 progress: Callable[[str], None] | None = None):
        self.llm = llm or LLM()
        self.model_override = model_override or os.environ.get("JUDGEOPT_MODEL") or None
        self.default_model = default_model
        self.sample = sample
        self.loader = loader
        # name -> function for metrics added by hooks; None for those stats.py computes itself
        self.metrics = dict(metrics) if metrics is not None else dict.fromkeys(BUILTIN_METRICS)
        self.progress = progress
        self.base = Path.cwd()
        self._loaded: dict[Path, Loaded] = {}
        self._evaluations: dict[tuple[Any, ...], dict[str, CriterionResult]] = {}
        self.evaluations: list[dict[str, Any]] = []

    def load(self, path: str | Path) -> Loaded:
        """Spec, data and splits; raises SpecError naming file, line and fix."""
        path = (self.base / path).resolve()
        if path not in self._loaded:
            spec = load_spec(path, tuple(self.metrics))
            dataset = load_dataset(spec, self.loader)
            self._loaded[path] = Loaded(spec, dataset, split_dataset(dataset.records, spec.split))
        return self._loaded[path]

    def model_for(self, spec: Spec, role: str = "judge") -> Model:
        """Resolution order: command line or JUDGEOPT_MODEL, the spec, the ini default, the embedded model."""
        if self.model_override:
            return Model(self.model_override)
        return spec.model_for(role) or Model(self.default_model or EMBEDDED_MODEL)

    def records(self, loaded: Loaded, split: str) -> tuple[Any, ...]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
        return sample_groups(getattr(loaded.splits, split), self.sample, loaded.spec.split.seed)

    def evaluate(self, path: str | Path, criterion: str | None = None, *, instruction: str | None = None,
                 split: str = "test", shape: str | None = None) -> CriterionResult | dict[str, CriterionResult]:
        """Judge a split and measure agreement: one criterion's result, or all of them when criterion is None."""
        loaded = self.load(path)
        spec = loaded.spec
        if criterion is not None and criterion not in spec.criteria:
            raise SpecError([f"{spec.path}: no criterion '{criterion}'. Fix: use one of {', '.join(spec.criteria)}"])
        if instruction is not None and criterion is None:
            raise ValueError("an instruction replaces one criterion's: name the criterion too")
        instructions = {name: c.instruction for name, c in spec.criteria.items()}
        sources = dict.fromkeys(spec.criteria, "spec")
        if instruction is not None:
            instructions[criterion] = instruction
            sources[criterion] = "argument"
        names = [criterion] if instruction is not None else list(spec.criteria)
        results = self.evaluate_instructions(loaded, instructions, names, split=split,
                                             shape=shape or spec.inference, sources=sources)
        return results[criterion] if criterion is not None else results

    def evaluate_instructions(self, loaded: Loaded, instructions: dict[str, str], names: Sequence[str], *, split: str,
                              shape: str, sources: dict[str, str]) -> dict[str, CriterionResult]:
        spec = loaded.spec
        key = (spec.path, split, shape, tuple(names), tuple(instructions[n] for n in names))
        if key not in self._evaluations:
            records = self.records(loaded, split)
            model = self.model_for(spec)
            if self.progress:
                self.progress(f"judging {spec.name}: {len(records)} samples x {len(names)} criteria ({shape}) on {model.name}")
            judged: Judged = self.llm.run(judge_records(self.llm, model, spec, records, instructions, criteria=names, shape=shape))
            self._register_metrics()
            results = {name: assess(spec, spec.criteria[name], judged.judgments[name], split=split, shape=shape,
                                    instruction=instructions[name], instruction_source=sources[name]) for name in names}
            self._evaluations[key] = results
            self.evaluations.append({
                "spec": spec.name, "path": str(spec.path), "split": split, "shape": shape, "model": model.describe(),
                "records": len(records), "usage": judged.usage.to_json(), "logprobs_missing": judged.logprobs_missing,
                "split_ids": loaded.splits.ids(), "results": [r.to_json() for r in results.values()],
            })
        return self._evaluations[key]

    def _register_metrics(self) -> None:
        from .stats import CUSTOM, register_metric  # scipy: only once something was judged

        for name, function in self.metrics.items():
            if function is not None and CUSTOM.get(name) is not function:
                register_metric(name, function)

    def close(self) -> None:
        self.llm.close()
