"""A judging session: each spec and its data loaded once, one model client, every result kept.

The pytest layer and Python scripts drive the same object, so a test using the ``judge``
fixture, a regression item and a script share loading, the answer cache and the results.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from .aio import gather_or_cancel
from .baseline import BaselineSpec
from .cases import Case, CaseResult, judge_cases, load_cases
from .compare import Comparison, Configuration, Rules, Side, compare, scoring_of
from .data import Dataset, Loader, load_dataset
from .interference import InterferenceResult, rules_of
from .judge import CriterionResult, Judged, assess, judge_records, judge_shapes, prediction_rows
from .llm import LLM
from .local_model import MODEL_NAME as EMBEDDED_MODEL
from .probes import Probe, ProbeResult, Transform, assess_probe, changed_batches, load_probes
from .replies import Usage
from .scoring import Scored, as_record, check_inputs, score_records
from .spec import BUILTIN_METRICS, Interference, Model, Spec, SpecError, SpecWarning, load_spec
from .splits import Splits, repeated_sources, sample_groups, split_dataset

if TYPE_CHECKING:
    from .lockfile import Lock
    from .optimize.budget import Budget
    from .optimize.results import OptimizationResult

SPLITS = ("train", "val", "test")
Metric = Callable[[Any, Any], "float | None"]


@dataclass(frozen=True)
class Loaded:
    spec: Spec
    dataset: Dataset
    splits: Splits
    cases: tuple[Case, ...] = ()
    probes: tuple[Probe, ...] = ()
    metrics: Mapping[str, Metric | None] = field(default_factory=lambda: dict.fromkeys(BUILTIN_METRICS))


class Session:
    def __init__(self, llm: LLM | None = None, *, model_override: str | None = None, default_model: str | None = None,
                 sample: int | None = None, loader: Loader | None = None, metrics: Mapping[str, Metric | None] | None = None,
                 progress: Callable[[str], None] | None = None, state_dir: str | Path = ".judgeopt",
                 transforms: Mapping[str, Transform] | Callable[[], Mapping[str, Transform]] | None = None,
                 hooks: Callable[[Path], tuple[Loader | None, Mapping[str, Metric | None]]] | None = None):
        self.llm = llm or LLM()
        # the probes' transforms by name (pytest_judgeopt_transforms hooks), or a function asked when a spec loads;
        # None: not known, so a transform's name is checked only when its probe runs
        self.transforms = transforms
        self.model_override = model_override or os.environ.get("JUDGEOPT_MODEL") or None
        self.default_model = default_model
        self.sample = sample
        self.loader = loader
        # name -> function for metrics added by hooks; None for those stats.py computes itself
        self.metrics = dict(metrics) if metrics is not None else dict.fromkeys(BUILTIN_METRICS)
        # given a spec's path, the loader and metrics that apply to it (under pytest: the hooks of the conftest
        # files of its directory, asked when the spec is loaded); else ``loader`` and ``metrics`` for every spec
        self.hooks = hooks
        self.progress = progress
        self.state_dir = Path(state_dir)
        # things the user should know that are no test's failure (stale lock files, a setting a provider drops, ...):
        # the client's own list, so what it learns while calling is said with the rest
        self.notes: list[str] = self.llm.notes
        self.optimizations: list[OptimizationResult] = []
        self._in_force: dict[Path, tuple[dict[str, str], dict[str, str]]] = {}
        self._recorded: set[tuple[Any, ...]] = set()
        self._logprobs_missing: dict[tuple[Any, ...], int] = {}
        self._logprobs_noted: set[str] = set()
        # specs whose ::merged check runs in this session (the plugin fills it in from the collected items)
        self.merged_ahead: set[Path] = set()
        self.base = Path.cwd()
        self._loaded: dict[Path, Loaded] = {}
        self._evaluations: dict[tuple[Any, ...], dict[str, CriterionResult]] = {}
        self.evaluations: list[dict[str, Any]] = []
        self._usages: dict[tuple[Any, ...], Usage] = {}  # what each memoised evaluation cost, cache hits included
        self._interference: dict[tuple[Any, ...], InterferenceResult] = {}
        self.interferences: list[dict[str, Any]] = []
        self._comparisons: dict[tuple[Any, ...], Comparison] = {}
        self._last_results: dict[str, dict[str, CriterionResult]] = {}  # each side's results of the last comparison
        self.comparisons: list[dict[str, Any]] = []  # baseline, compare and model comparisons, for the reports
        self._cases: dict[tuple[Any, ...], CaseResult] = {}
        self.case_results: list[dict[str, Any]] = []  # the cases judged, as plain data for the reports
        self._probes: dict[tuple[Any, ...], ProbeResult] = {}
        self.probe_results: list[dict[str, Any]] = []  # the probes run, as plain data for the reports

    def load(self, path: str | Path) -> Loaded:
        """Spec, data, splits and the spec's answer file; raises SpecError naming file, line and fix."""
        from .answers import answers_path, read_answers

        path = (self.base / path).resolve()
        if path not in self._loaded:
            loader, metrics = self.hooks(path) if self.hooks is not None else (self.loader, self.metrics)
            spec = load_spec(path, tuple(metrics))
            dataset = load_dataset(spec, loader)
            problems: list[str] = []
            cases: tuple[Case, ...] = ()
            probes: tuple[Probe, ...] = ()
            try:
                cases = load_cases(spec, dataset.records)
            except SpecError as exc:
                problems += exc.problems
            try:
                probes = load_probes(spec, tuple(metrics), self.known_transforms())
            except SpecError as exc:
                problems += exc.problems
            if problems:
                raise SpecError(problems)
            self.llm.answer_files[spec.path] = {key: a.reply for key, a in read_answers(answers_path(spec.path)).items()}
            if note := dataset.skipped_note():
                self.notes.append(note)
            # under pytest, shown in its warnings summary; filterwarnings can make it an error
            for text in filter(None, (*spec.warnings, repeated_sources(spec, dataset.records))):
                warnings.warn(SpecWarning(text), stacklevel=2)
            self._loaded[path] = Loaded(spec, dataset, split_dataset(dataset.records, spec.split), cases=cases,
                                        probes=probes, metrics=dict(metrics))
        return self._loaded[path]

    def model_for(self, spec: Spec, role: str = "judge") -> Model:
        """Resolution order: command line or JUDGEOPT_MODEL, the spec, the ini default, the embedded model.

        The optimizer's roles use the judge's model unless the spec's ``models:`` names one for them.
        """
        if role != "judge" and role in spec.models:
            model = spec.models[role]
        elif self.model_override:
            model = Model(self.model_override)
        else:
            model = spec.model_for("judge") or Model(self.default_model or EMBEDDED_MODEL)
        return replace(model, by_endpoint=True) if spec.cache.by_endpoint else model

    def records(self, loaded: Loaded, split: str) -> tuple[Any, ...]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
        return sample_groups(getattr(loaded.splits, split), self.sample, loaded.spec.split.seed)

    @overload
    def evaluate(self, path: str | Path, criterion: str, *, instruction: str | None = None, split: str = "test",
                 shape: str | None = None, together: Sequence[str] = ()) -> CriterionResult: ...

    @overload
    def evaluate(self, path: str | Path, criterion: None = None, *, instruction: None = None, split: str = "test",
                 shape: str | None = None, together: Sequence[str] = ()) -> dict[str, CriterionResult]: ...

    def evaluate(self, path: str | Path, criterion: str | None = None, *, instruction: str | None = None,
                 split: str = "test", shape: str | None = None,
                 together: Sequence[str] = ()) -> CriterionResult | dict[str, CriterionResult]:
        """Judge a split and measure agreement: one criterion's result, or all of them when criterion is None.

        ``together`` names the criteria judged in the same pass (the criterion items a run selected): with
        separate prompts only those are judged, record by record, so ``pytest spec.yaml::fluency`` pays for one
        criterion. Without it every criterion is judged. A merged prompt holds every criterion whatever is asked.
        """
        loaded = self.load(path)
        spec = loaded.spec
        if criterion is not None and criterion not in spec.criteria:
            raise SpecError([f"{spec.path}: no criterion '{criterion}'. Fix: use one of {', '.join(spec.criteria)}"])
        instructions, sources = self.in_force(loaded)
        instructions, sources = dict(instructions), dict(sources)
        shape = shape or spec.inference
        wanted = set(together) | ({criterion} if criterion is not None else set())
        names = [n for n in spec.criteria if n in wanted] if together and shape == "separate" else list(spec.criteria)
        if instruction is not None:
            if criterion is None:
                raise ValueError("an instruction replaces one criterion's: name the criterion too")
            instructions[criterion] = instruction
            sources[criterion] = "argument"
            names = [criterion]
        results = self.evaluate_instructions(loaded, instructions, names, split=split, shape=shape, sources=sources,
                                             record=True)
        return results[criterion] if criterion is not None else results

    def evaluate_instructions(self, loaded: Loaded, instructions: dict[str, str], names: Sequence[str], *, split: str,
                              shape: str, sources: dict[str, str], record: bool = False,
                              model: Model | None = None) -> dict[str, CriterionResult]:
        """Judge and assess, memoized; ``record`` puts the result in the run's report (the items' own evaluations).
        ``model`` replaces the judge's (a model comparison); by default the session's model for the spec."""
        spec = loaded.spec
        model = model or self.model_for(spec)
        key = self._evaluation_key(loaded, instructions, names, split=split, shape=shape, model=model)
        if key not in self._evaluations:
            records = self.records(loaded, split)
            shapes = [shape]
            if shape == "separate" and self._merged_check_follows(loaded, instructions, names, split, model):
                shapes.append("merged")
            if self.progress:
                also = ", and merged for the ::merged check, each sample's calls together" if len(shapes) > 1 else ""
                criteria = f"{len(names)} criterion" if len(names) == 1 else f"{len(names)} criteria"
                self.progress(f"judging {spec.name}: {len(records)} samples x {criteria} ({shape}{also}) "
                              f"on {model.name}")
            judged = self.llm.run(judge_shapes(self.llm, model, spec, records, instructions, criteria=names, shapes=shapes))
            self._register_metrics(loaded.metrics)
            for each in shapes:
                each_key = self._evaluation_key(loaded, instructions, names, split=split, shape=each, model=model)
                self._evaluations[each_key] = {
                    name: assess(spec, spec.criteria[name], judged[each].judgments[name], split=split, shape=each,
                                 instruction=instructions[name], instruction_source=sources[name],
                                 ratings={r.id: r.ratings.get(name) for r in records} if spec.dataset.annotators else None)
                    for name in names}
                self._usages[each_key] = judged[each].usage
                self._logprobs_missing[each_key] = judged[each].logprobs_missing
                self._note_missing_logprobs(model, judged[each])
        cached = self._evaluations[key]
        if any(r.instruction_source != sources[n] for n, r in cached.items()):
            # the memo is keyed by what was judged; where the instructions came from is the caller's
            cached = {n: replace(r, instruction_source=sources[n]) for n, r in cached.items()}
        if record and key not in self._recorded:
            self._recorded.add(key)
            self.evaluations.append({
                "spec": spec.name, "path": str(spec.path), "split": split, "shape": shape,
                "model": model.describe(), "records": len(self.records(loaded, split)),
                "scoring": scoring_of(spec, model), "data_hash": loaded.dataset.digest, "split_ids": loaded.splits.ids(),
                "results": [r.to_json() for r in cached.values()],
                "usage": self._usages[key].answers_json(), "logprobs_missing": self._logprobs_missing.get(key, 0),
                "predictions": prediction_rows(cached.values()),  # per sample; the report writes them apart
            })
        return cached

    def _merged_check_follows(self, loaded: Loaded, instructions: dict[str, str], names: Sequence[str], split: str,
                              model: Model) -> bool:
        """Whether this separate pass is the one the spec's ``::merged`` check compares with, and that check runs
        in this session (``merged_ahead``): then the pass makes the merged calls too, each next to its sample's
        separate calls, so a local model evaluates the sample's shared prefix once for both shapes."""
        spec = loaded.spec
        return (spec.path in self.merged_ahead and split == "test" and len(names) > 1 and list(names) == list(spec.criteria)
                and instructions == self.in_force(loaded)[0] and model == self.model_for(spec)
                and self._evaluation_key(loaded, instructions, names, split=split, shape="merged", model=model)
                not in self._evaluations)

    def _note_missing_logprobs(self, model: Model, judged: Judged) -> None:
        """Said once per model: its replies came without the logprobs asked for, so their scores are the parsed ones."""
        if judged.logprobs_missing and model.name not in self._logprobs_noted:
            self._logprobs_noted.add(model.name)
            self.notes.append(f"{model.describe()} returned no token logprobs for {judged.logprobs_missing} of "
                              f"{judged.usage.requests} judge replies that asked for them (judge.logprobs); those "
                              "judgments use the parsed score, and results.json counts them under `scoring`")

    def in_force(self, loaded: Loaded) -> tuple[dict[str, str], dict[str, str]]:
        """The instructions ordinary runs test, and where each came from: the lock file while it
        matches the spec and data, else the spec (with a note saying why the lock was not used)."""
        from .lockfile import LockError, read_lock, spec_hash

        spec = loaded.spec
        if spec.path not in self._in_force:
            instructions = {name: c.instruction for name, c in spec.criteria.items()}
            sources = dict.fromkeys(spec.criteria, "spec")
            try:
                lock = read_lock(spec.path)
            except LockError as exc:
                lock = None
                self.notes.append(f"{exc}; testing the spec's instructions")
            if lock is not None:
                if lock.spec_hash != spec_hash(spec) or lock.data_hash != loaded.dataset.digest:
                    changed = "spec" if lock.spec_hash != spec_hash(spec) else "data"
                    self.notes.append(f"{lock.path.name}: the {changed} changed since this lock was made, so the spec's "
                                      f"instructions are tested; run pytest --judge-optimize to make a new lock")
                else:
                    other_model = self.lock_model_note(spec, lock)
                    if other_model is not None:
                        self.notes.append(other_model)
                    if other_model is None or self.model_override:
                        if lock.edited:
                            self.notes.append(f"{lock.path.name} was edited by hand; testing its instructions as edited")
                        for name in spec.criteria:
                            if name in lock.instructions:
                                instructions[name], sources[name] = lock.instructions[name], "lock"
            self._in_force[spec.path] = (instructions, sources)
        return self._in_force[spec.path]

    def lock_model_note(self, spec: Spec, lock: Lock) -> str | None:
        """What to say when a lock was optimized with another judge than this run's, or None.

        The rule (README, lock files): a lock holds for the spec, the data and the judge model it was made
        with. A model named for this run (--judge-model, JUDGEOPT_MODEL) is a deliberate choice, so the
        lock's instructions are tested on it; a model the project itself now names (the spec's ``model``,
        the ini ``judge_model``) is a change like an edit of the spec, so the spec's instructions are tested.
        """
        judge = self.model_for(spec).describe()
        if lock.judge_model is None or lock.judge_model == judge:
            return None
        if self.model_override:
            return (f"{lock.path.name} was optimized with {lock.judge_model}; this run judges with {judge} "
                    "(--judge-model or JUDGEOPT_MODEL), so the lock's instructions are tested on that model")
        return (f"{lock.path.name} was optimized with {lock.judge_model}, but the spec now judges with {judge}, "
                f"so the spec's instructions are tested; run pytest --judge-optimize to make a lock for {judge}, or "
                f"pass --judge-model {lock.judge_model.split(' ', 1)[0]} to test the lock with the model it was made for")

    def optimize(self, path: str | Path, mode: str | None = None, *, seed: int | None = None, steps: int | None = None,
                 budget: Budget | None = None, write: bool = False) -> OptimizationResult:
        """Optimize a spec's instructions (``judge.optimize(spec, mode="SSS")``); ``write`` makes the lock file."""
        from .lockfile import write_lock
        from .optimize.run import optimize_spec

        loaded = self.load(path)
        result = optimize_spec(self, loaded, mode, seed=seed, steps=steps, budget=budget)
        if result.shape_note:
            self.notes.append(result.shape_note)
        if write:
            harmed = result.harmed
            if harmed:  # val said better, the untouched test split says significantly worse: nothing to lock
                result.lock_refused = ("; ".join(harmed.values())
                                       + "; no lock was written (the instructions in force are unchanged)")
            else:
                result.lock_path, result.lock_note = write_lock(result.spec, result.to_json(), loaded.dataset.digest)
                if result.lock_note:
                    self.notes.append(result.lock_note)
                self._in_force.pop(result.spec.path, None)
        self.optimizations.append(result)
        return result

    def _register_metrics(self, metrics: Mapping[str, Metric | None]) -> None:
        """The spec's own metrics, registered before its agreement is measured: two folders may each define a
        metric of the same name."""
        from .stats import CUSTOM, register_metric  # scipy: only once something was judged

        for name, function in metrics.items():
            if function is not None and CUSTOM.get(name) is not function:
                register_metric(name, function)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client (its loop, litellm's pooled connections) and the answer cache; pending answers are written."""
        self.llm.close()

    def instructions(self, loaded: Loaded) -> dict[str, str]:
        """The instructions in force, per criterion (the lock file's while it matches, else the spec's)."""
        return dict(self.in_force(loaded)[0])

    def interference(self, path: str | Path, *, split: str = "test") -> InterferenceResult:
        """Each criterion's agreement with the merged prompt against its separate prompt, on the same samples.

        Both shapes go through evaluate_instructions, so they share the memo and the answer cache
        with the regular items: when those judge with separate prompts, the check adds only the
        merged calls. An explicit call runs even on a spec with ``interference: false`` (at the
        default tolerance, unless the spec sets one): only a single criterion has nothing to merge.
        """
        loaded = self.load(path)
        spec = loaded.spec
        if len(spec.criteria) < 2:
            raise ValueError(f"{spec.path}: the interference check needs two or more criteria to merge")
        instructions, sources = self.in_force(loaded)  # the items' own, so separate judgments are theirs too
        key = (spec.path, split, tuple(instructions[n] for n in spec.criteria))
        if key not in self._interference:
            settings = spec.interference or Interference()
            comparison = self.compare_configurations(loaded, self.configuration(loaded, label="separate", shape="separate"),
                                                     self.configuration(loaded, label="merged", shape="merged"),
                                                     kind="merged", rules=rules_of(settings), split=split, sources=sources)
            results = {side: self._last_results[side] for side in ("a", "b")}
            result = InterferenceResult(comparison, settings, self.model_for(spec).describe(), results["a"], results["b"])
            self._interference[key] = result
            self.interferences.append({**result.to_json(), "comparison": comparison.to_json(),
                                       "predictions": prediction_rows(result.merged.values())})
        return self._interference[key]

    # -- paired comparisons of two judge configurations ----------------------------------------
    def configuration(self, loaded: Loaded, *, label: str, instructions: Mapping[str, str] | None = None,
                      shape: str | None = None, model: str | Model | None = None) -> Configuration:
        """The configured judge (instructions in force, the spec's shape, the session's model, the spec's
        scoring), with any of them replaced."""
        spec = loaded.spec
        chosen = dict(self.in_force(loaded)[0])
        if instructions:
            unknown = sorted(set(instructions) - set(spec.criteria))
            if unknown:
                raise SpecError([f"{spec.path}: no criterion {', '.join(map(repr, unknown))}. "
                                 f"Fix: use one of {', '.join(spec.criteria)}"])
            chosen.update(instructions)
        if shape is not None and shape not in ("separate", "merged"):
            raise ValueError(f"shape must be 'separate' or 'merged', not {shape!r}")
        resolved = self.model_for(spec) if model is None else model if isinstance(model, Model) else Model(model)
        return Configuration(label=label, instructions=chosen, shape=shape or spec.inference, model=resolved.describe(),
                             scoring=scoring_of(spec, resolved), data_hash=loaded.dataset.digest)

    def compare_configurations(self, loaded: Loaded, a: Configuration, b: Configuration, *, kind: str, rules: Rules,
                               split: str = "test", sources: Mapping[str, str] | None = None,
                               models: Mapping[str, Model] | None = None) -> Comparison:
        """Judge the same samples with both configurations (through the memo and the answer cache, so what the
        items judged is reused) and compare them; ``models`` gives a side's model object by label."""
        spec = loaded.spec
        names = list(spec.criteria)
        given = dict(sources or dict.fromkeys(names, "argument"))
        sides = {}
        for side, config in (("a", a), ("b", b)):
            model = (models or {}).get(config.label) or self._model_named(spec, config.model)
            results = self.evaluate_instructions(loaded, dict(config.instructions), names, split=split, shape=config.shape,
                                                 sources={n: given.get(n, "argument") for n in names}, model=model)
            key = self._evaluation_key(loaded, dict(config.instructions), names, split=split, shape=config.shape,
                                       model=model)
            self._last_results[side] = results
            sides[side] = Side(config, {n: r.judgments for n, r in results.items()}, self._usages[key])
        return compare(spec, sides["a"], sides["b"], kind=kind, split=split, rules=rules,
                       records=len(self.records(loaded, split)))

    def _model_named(self, spec: Spec, described: str) -> Model:
        """The session's model object when a configuration names it (it carries the endpoint), else a new one."""
        configured = self.model_for(spec)
        return configured if configured.describe() == described else Model(described)

    def compare(self, path: str | Path, *, model: str | Model | None = None, instructions: Mapping[str, str] | None = None,
                shape: str | None = None, split: str = "test", kind: str = "compare") -> Comparison:
        """The configured judge (a) against the same judge with a model, instructions or prompt shape replaced (b),
        on the same samples (``judge.compare(spec, model="openai/gpt-4o")``). Verdicts follow ``baseline:``."""
        loaded = self.load(path)
        spec = loaded.spec
        if model is None and not instructions and shape is None:
            raise ValueError("judge.compare needs something to change: model=, instructions= or shape=")
        # a model by name keeps the configured model's endpoint and settings: the same provider, another model
        other = replace(self.model_for(spec), name=model) if isinstance(model, str) else model
        key = (spec.path, split, None if other is None else other.describe(), tuple(sorted((instructions or {}).items())),
               shape)
        if key not in self._comparisons:
            a = self.configuration(loaded, label="configured")
            b = self.configuration(loaded, label=other.describe() if other is not None else "changed",
                                   instructions=instructions, shape=shape, model=other)
            change = (f"switching to {other.describe()}" if other is not None and other.describe() != a.model
                      else "the change")
            rules = Rules(max_drop=spec.baseline.max_drop, confidence=spec.correlation.confidence,
                          inconclusive_passes=spec.baseline.inconclusive == "pass", change=change,
                          a_noun=f"the configured judge's ({a.model})", b_noun=f"{b.label}")
            models = {b.label: other} if other is not None else None
            comparison = self.compare_configurations(loaded, a, b, kind=kind, rules=rules, split=split,
                                                     sources=self.in_force(loaded)[1], models=models)
            self._comparisons[key] = comparison
            self.comparisons.append(comparison_record(comparison, self._last_results["b"]))
        return self._comparisons[key]

    def against_baseline(self, path: str | Path, baseline: BaselineSpec, *, source: str = "") -> Comparison:
        """This run's judgments of the test split (the items' own) against an earlier run's, read from its report,
        paired on the sample ids both judged; ``source`` says where the baseline came from."""
        loaded = self.load(path)
        spec = loaded.spec
        key = (spec.path, "baseline", source, baseline.path)
        if key not in self._comparisons:
            instructions, sources = self.in_force(loaded)
            names = list(spec.criteria)
            model = self.model_for(spec)
            results = self.evaluate_instructions(loaded, instructions, names, split="test", shape=spec.inference,
                                                 sources=sources, record=True)
            usage = self._usages[self._evaluation_key(loaded, instructions, names, split="test", shape=spec.inference,
                                                      model=model)]
            this = Side(self.configuration(loaded, label="this run"), {n: r.judgments for n, r in results.items()}, usage)
            rules = Rules(max_drop=spec.baseline.max_drop, confidence=spec.correlation.confidence,
                          inconclusive_passes=spec.baseline.inconclusive == "pass", change="this run",
                          a_noun="the baseline", b_noun="this run's")
            common = [n for n in names if n in baseline.judgments]
            comparison = compare(spec, Side(baseline.configuration, baseline.judgments), this, kind="baseline",
                                 split="test", rules=rules, records=len(self.records(loaded, "test")), criteria=common)
            shared = {j.record_id for n in common for j in this.judgments[n]} & {
                j.record_id for n in common for j in baseline.judgments[n]}
            if not shared:
                comparison.problems.append(
                    f"no sample of this run's test split was judged in the baseline ({len(comparison.unpaired.get('a', []))} "
                    f"baseline samples, {len(comparison.unpaired.get('b', []))} here): it comes from another dataset or "
                    f"split ({'; '.join(differences_in_data(comparison)) or 'same data hash'}); make a new baseline")
            only_here = [n for n in names if n not in baseline.judgments]
            only_there = [n for n in baseline.judgments if n not in spec.criteria]
            if only_here:
                comparison.notes.append(f"not in the baseline, so not compared: {', '.join(only_here)}")
            if only_there:
                comparison.notes.append(f"in the baseline only: {', '.join(only_there)}")
            if source:
                comparison.notes.append(f"baseline: {source}")
            self._comparisons[key] = comparison
            self.comparisons.append(comparison_record(comparison))
        return self._comparisons[key]

    def _evaluation_key(self, loaded: Loaded, instructions: dict[str, str], names: Sequence[str], *, split: str,
                        shape: str, model: Model | None = None) -> tuple[Any, ...]:
        """What makes two evaluations the same judgments: the memo's key, shared with the comparisons."""
        model = model or self.model_for(loaded.spec)
        return (loaded.spec.path, split, shape, model.describe(), tuple(names), tuple(instructions[n] for n in names))

    # -- judging given texts: judge.score, the spec's cases ------------------------------------
    def score(self, path: str | Path, criterion: str | None = None, /, *, instruction: str | None = None,
              **inputs: Any) -> Scored | dict[str, Scored]:
        """One judgment of the texts given by name (``judge.score(spec, "coherence", source=..., summary=...)``):
        the criterion's Scored, or every criterion's when ``criterion`` is None. Same prompts, instructions in
        force, model, cache and client as the items; ``instruction`` replaces the criterion's for this call."""
        return self.score_many(path, criterion, [inputs], instruction=instruction)[0]

    def score_many(self, path: str | Path, criterion: str | None = None, inputs: Sequence[Mapping[str, Any]] = (),
                   *, instruction: str | None = None) -> list[Any]:
        """``score`` for a list of inputs (dicts placeholder -> text), all calls in flight together, in order."""
        loaded = self.load(path)
        spec = loaded.spec
        if criterion is not None and criterion not in spec.criteria:
            raise SpecError([f"{spec.path}: no criterion '{criterion}'. Fix: use one of {', '.join(spec.criteria)}"])
        if instruction is not None and criterion is None:
            raise ValueError("an instruction replaces one criterion's: name the criterion too")
        if isinstance(inputs, Mapping):
            raise TypeError("score_many takes a list of inputs (dicts placeholder -> text); for one, use score()")
        instructions = dict(self.in_force(loaded)[0])
        if instruction is not None and criterion is not None:  # (the criterion is named: checked above)
            instructions[criterion] = instruction
        records = [as_record(f"input-{i}", check_inputs(spec, texts), spec) for i, texts in enumerate(inputs)]
        wanted = [criterion] if criterion is not None else list(spec.criteria)
        per_record = self.llm.run(score_records(self.llm, self.model_for(spec), spec, records, instructions, wanted))
        return [found[criterion] if criterion is not None else found for found in per_record]

    def case(self, path: str | Path, name: str, *, together: Sequence[str] = ()) -> CaseResult:
        """A case of the spec judged (memoized), with the cases named in ``together`` that are not judged yet
        in the same pass: the items of one run judge their selected cases at once."""
        loaded = self.load(path)
        spec = loaded.spec
        by_name = {c.name: c for c in loaded.cases}
        if name not in by_name:
            known = ", ".join(by_name) or "none"
            raise SpecError([f"{spec.path}: no case '{name}'. Fix: use one of the spec's cases ({known})"])
        instructions, sources = self.in_force(loaded)

        def key(case: str) -> tuple[Any, ...]:
            return (spec.path, case, tuple(sorted(instructions.items())))

        todo = [by_name[n] for n in dict.fromkeys([name, *together]) if n in by_name and key(n) not in self._cases]
        if todo:
            if self.progress:
                self.progress(f"judging {spec.name}: {len(todo)} case{'s' if len(todo) != 1 else ''} "
                              f"({spec.inference}) on {self.model_for(spec).name}")
            for case, result in zip(todo, self.judge_cases(loaded, todo, instructions, sources), strict=True):
                self._cases[key(case.name)] = result
                self.case_results.append(result.to_json())
        return self._cases[key(name)]

    def judge_cases(self, loaded: Loaded, cases: Sequence[Case], instructions: Mapping[str, str],
                    sources: Mapping[str, str] | None = None) -> list[CaseResult]:
        """Judge cases with the given instructions, in one pass; the results are not kept by the session."""
        spec = loaded.spec
        found = self.llm.run(judge_cases(self.llm, self.model_for(spec), spec, cases, instructions))
        model = self.model_for(spec).describe()
        used = dict(sources or dict.fromkeys(spec.criteria, "argument"))
        return [CaseResult(case=c, spec_name=spec.name, path=str(spec.path), shape=spec.inference, model=model,
                           checks=checks_, instruction_sources={n: used[n] for n in c.expect})
                for c, checks_ in zip(cases, found, strict=True)]

    # -- probes ------------------------------------------------------------------------------------
    def known_transforms(self) -> dict[str, Transform] | None:
        found = self.transforms() if callable(self.transforms) else self.transforms
        return None if found is None else dict(found)

    def probe(self, path: str | Path, name: str) -> ProbeResult:
        """Run one of the spec's probes on the test split (the ``--judge-sample`` of it, or the probe's own
        ``sample``), memoized: the unchanged prompts are the items' own, so they come from the answer cache."""
        loaded = self.load(path)
        spec = loaded.spec
        by_name = {p.name: p for p in loaded.probes}
        if name not in by_name:
            known = ", ".join(by_name) or "none"
            raise SpecError([f"{spec.path}: no probe '{name}'. Fix: use one of the spec's probes ({known})"])
        probe = by_name[name]
        instructions, _ = self.in_force(loaded)
        key = (spec.path, name, tuple(sorted(instructions.items())))
        if key in self._probes:
            return self._probes[key]
        records = sample_groups(self.records(loaded, "test"), probe.sample, spec.split.seed)
        shape = spec.inference
        names = list(spec.criteria) if shape == "merged" else list(probe.criteria)
        model = self.model_for(spec)
        changed, skipped = changed_batches(probe, records, self.known_transforms() or {}, spec.path)
        if self.progress:
            self.progress(f"probing {spec.name}: {probe.kind} '{probe.name}', {len(records)} samples x {len(names)} "
                          f"criteria ({shape}) on {model.name}")
        work = [judge_records(self.llm, model, spec, records, instructions, criteria=names, shape=shape)]
        work += [judge_records(self.llm, model, spec, batch, instructions, criteria=names, shape=shape,
                               seed=(r + 1 if probe.kind == "retest" else None)) for r, batch in enumerate(changed)]
        spent_before = self.llm.total()
        judged = self.llm.run(gather_or_cancel(work))
        spent = self.llm.total().minus(spent_before)
        criteria = assess_probe(probe, spec, judged[0].judgments, [a.judgments for a in judged[1:]])
        result = ProbeResult(probe=probe, spec_name=spec.name, path=str(spec.path), split="test", shape=shape,
                             model=model.describe(), records=len(records), criteria=criteria, skipped=skipped,
                             calls=spent.calls, cache_hits=spent.cache_hits)
        self._probes[key] = result
        self.probe_results.append(result.to_json())
        return result


def comparison_record(comparison: Comparison, results_b: Mapping[str, CriterionResult] | None = None) -> dict[str, Any]:
    """A comparison as the reports keep it: its JSON form, with side b's judgments when this run made them."""
    return {**comparison.to_json(), "predictions": prediction_rows(results_b.values()) if results_b else []}


def differences_in_data(comparison: Comparison) -> list[str]:
    return [d for d in comparison.differs if d.startswith("data hash")]
