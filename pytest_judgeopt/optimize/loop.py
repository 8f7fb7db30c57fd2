"""The optimization loop of one spec in one mode, its checkpoint state and the key of a run.

One step: the judge scores a train batch; the loss model critiques each judgment; the gradient
model turns critiques into feedback on the instructions; the optimizer model rewrites them; the
gate on the val split keeps a rewrite only on a gain that harms no criterion, judged as the
combination kept (``gate``). Which calls each stage makes is the mode's; the loop is written once
for all five. After every step the state is
written atomically, so a killed run continues from its last step and a finished one is reused.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..cases import Case, judge_cases
from ..data import Record
from ..files import write_atomic
from ..judge import Judged, judge_records
from ..llm import LLM
from ..spec import Model, Spec
from .budget import Allowance, BudgetExceeded
from .errors import ReplayIncomplete
from .gate import (
    Decision,
    GateContext,
    Measured,
    choose,
    combination,
    confirm,
    gate_level,
    measure,
    metric_options,
    shared_documents,
)
from .modes import ROLES, Mode, planned_calls
from .results import StepRecord
from .roles import Seen
from .step import Step, together

CHECKPOINT_VERSION = 3  # 2: the gate counts failed judgments and judges the combination it keeps; 3: at the items' level


@dataclass
class State:
    run_key: str
    mode: str
    initial: dict[str, str]
    instructions: dict[str, str]
    val: dict[str, float | None]
    rng: Any
    history: list[StepRecord] = field(default_factory=list)
    finished: bool = False
    stopped: str | None = None
    val_failed: dict[str, list[int]] = field(default_factory=dict)  # criterion -> [failed, judged] on val
    # at level group: criterion -> document -> its own value on val, of the instructions in force
    val_documents: dict[str, dict[str, float]] = field(default_factory=dict)
    # the initial instructions as the gate first measured them (values, failures, documents)
    initial_val: dict[str, float | None] = field(default_factory=dict)
    initial_failed: dict[str, list[int]] = field(default_factory=dict)
    initial_documents: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def measured(self) -> Measured:
        """The instructions in force as the gate last measured them on val."""
        return Measured.from_counts(self.val, self.val_failed, self.val_documents)

    @property
    def initial_measured(self) -> Measured:
        return Measured.from_counts(self.initial_val, self.initial_failed, self.initial_documents)

    def set_measured(self, measured: Measured) -> None:
        self.val, self.val_failed = dict(measured.value), measured.failure_counts()
        self.val_documents = {c: dict(d) for c, d in measured.documents.items()}

    def set_initial(self, measured: Measured) -> None:
        self.set_measured(measured)
        self.initial_val, self.initial_failed = dict(self.val), measured.failure_counts()
        self.initial_documents = {c: dict(d) for c, d in measured.documents.items()}

    def val_outcome(self) -> tuple[dict[str, float | None], dict[str, float | None]]:
        """Val before (the initial instructions) and after (those in force), per criterion, compared as the gate
        compares: at level group on the documents both have a value in."""
        before, after = shared_documents(self.initial_measured, self.measured)
        return before.value, after.value

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rng"] = [self.rng[0], list(self.rng[1]), self.rng[2]]
        data["version"] = CHECKPOINT_VERSION
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        if data.get("version") != CHECKPOINT_VERSION:  # an older gate's decisions are not this gate's
            raise ValueError(f"checkpoint version {data.get('version')!r}")
        rng = (data["rng"][0], tuple(data["rng"][1]), data["rng"][2])
        history = [StepRecord(**h) for h in data["history"]]
        return cls(data["run_key"], data["mode"], data["initial"], data["instructions"], data["val"], rng, history,
                   data["finished"], data["stopped"], data["val_failed"], data["val_documents"], data["initial_val"],
                   data["initial_failed"], data["initial_documents"])


def run_key(spec: Spec, data_digest: str, mode: Mode, models: Mapping[str, Model], sample: int | None, seed: int,
            steps: int | None = None, cases: Sequence[Case] = ()) -> str:
    """Everything a finished run depends on: the same key means the same run, which is not repeated.

    The step count is the one run (``--judge-steps`` may override the spec's): a finished 1-step run is
    not the answer to a request for 4 steps, nor a 4-step run to a request for 1.
    """
    settings = asdict(spec.optimize)
    settings["prompts"] = {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in spec.optimize.prompts.items()}
    settings.update(mode=mode.name, seed=seed, steps=steps or spec.optimize.steps)
    payload: dict[str, Any] = {"spec": hashlib.sha256(spec.path.read_bytes()).hexdigest(), "data": data_digest,
                               "settings": settings, "models": {r: m.describe() for r, m in sorted(models.items())},
                               "sample": sample}
    if cases and (spec.optimize.gate.cases or spec.optimize.cases_in_prompt):  # a case file can change apart from the spec
        payload["cases"] = [[c.name, c.inputs, {k: str(v) for k, v in c.expect.items()}] for c in cases]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class Optimization:
    """One optimization run of one spec in one mode; resumable from its checkpoint after every step."""

    def __init__(self, llm: LLM, spec: Spec, mode: Mode, models: Mapping[str, Model], *, train: Sequence[Record],
                 val: Sequence[Record], checkpoint: Path, key: str, seed: int, steps: int | None = None,
                 budget: Allowance | None = None, progress: Callable[[str], None] | None = None,
                 cases: Sequence[Case] = ()):
        self.llm = llm
        self.cases = list(cases)
        self.spec = spec
        self.mode = mode
        self.models = dict(models)
        self.train = list(train)
        self.val = list(val)
        self.checkpoint = checkpoint
        self.key = key
        self.seed = seed
        self.steps = steps or spec.optimize.steps
        self.budget = budget
        self.progress = progress or (lambda text: None)

    def planned(self) -> dict[str, int]:
        return planned_calls(self.mode, len(self.spec.criteria), min(self.spec.optimize.batch_size, len(self.train)),
                             len(self.gate_set), self.spec.optimize.diagnostics)

    @property
    def gate_set(self) -> list[Record]:
        """The val samples the gate judges; none when the gate metric is ``none`` (every rewrite is kept)."""
        return [] if self.spec.optimize.gate.metric == "none" else self.val

    def load_state(self) -> State | None:
        if not self.checkpoint.is_file():
            return None
        try:
            data = json.loads(self.checkpoint.read_text())
            state = State.from_json(data)
        except (ValueError, KeyError, TypeError, IndexError):
            self.progress(f"checkpoint {self.checkpoint} is unreadable or of an older version; starting over")
            return None
        return state if state.run_key == self.key else None

    def save_state(self, state: State) -> None:
        write_atomic(self.checkpoint, json.dumps(state.to_json(), indent=1, sort_keys=True))

    def measure(self, judged: Judged) -> Measured:
        """The gate's measurement of val judgments: the gate metric, at the items' level (``gate_level``)."""
        return measure(judged, self.spec.optimize.gate.metric, metric_options(self.spec), gate_level(self.spec))

    async def judge(self, records: Sequence[Record], instructions: Mapping[str, str], role: str,
                    criteria: Sequence[str] | None = None) -> Judged:
        judged = await judge_records(self.llm, self.models["judge"], self.spec, records, instructions,
                                     criteria=criteria, shape=self.mode.judge.shape, role=role)
        if any(j.failure == "call_budget" for js in judged.judgments.values() for j in js):
            raise BudgetExceeded("the budget ran out while judging")
        missing = sum(j.failure == "call_replay_miss" for js in judged.judgments.values() for j in js)
        if missing:
            raise ReplayIncomplete(self.spec, f"{missing} {role} judgments by {self.models['judge'].name}")
        return judged

    def run(self) -> tuple[State, int]:
        """Steps until done or out of budget; returns the final state and the step it resumed from."""
        state = self.load_state()
        if state is not None and state.stopped == "budget":
            # a budget stop is a pause: run again (with a larger budget) and it goes on from its last step
            state = state if state.history else None
            if state is not None:
                state.stopped, state.finished = None, False
        resumed_from = len(state.history) if state else 0
        if state is None:
            initial = {c: crit.instruction for c, crit in self.spec.criteria.items()}
            try:
                first = self.measure(self.llm.run(self.judge(self.gate_set, initial, "gate")))
            except BudgetExceeded:
                state = State(self.key, self.mode.name, initial, dict(initial), dict.fromkeys(initial),
                              random.Random(self.seed).getstate(), stopped="budget", finished=True,
                              initial_val=dict.fromkeys(initial))
                self.save_state(state)
                return state, 0
            state = State(self.key, self.mode.name, initial, dict(initial), {}, random.Random(self.seed).getstate())
            state.set_initial(first)
            self.save_state(state)
        while not state.finished and len(state.history) < self.steps:
            try:
                record = self.llm.run(self.step(state, len(state.history) + 1))
            except BudgetExceeded:
                state.stopped, state.finished = "budget", True
                self.save_state(state)
                self.progress(f"budget reached after {len(state.history)} steps; keeping the best instructions so far")
                break
            state.history.append(record)
            self.save_state(state)
        if not state.finished:
            state.finished = True
            self.save_state(state)
        return state, resumed_from

    async def step(self, state: State, number: int) -> StepRecord:
        before = {role: self._requests(role) for role in ROLES}
        rng = random.Random()
        rng.setstate(state.rng)
        batch = rng.sample(self.train, min(self.spec.optimize.batch_size, len(self.train)))
        new_rng = rng.getstate()
        criteria = list(self.spec.criteria)
        step = Step(self.llm, self.spec, self.mode, self.models, state.instructions, self.cases, seed=self.seed)
        self._check_budget()
        judged = await self.judge(batch, state.instructions, "judge")
        seen = []
        for i, sample in enumerate(batch):
            js = {c: judged.judgments[c][i] for c in criteria}
            seen.append(Seen(sample, {c: js[c].reply for c in criteria}, {c: js[c].score for c in criteria}))
        self._check_budget()
        grads = await together(*[step.feedback(s) for s in seen])
        self._check_budget()
        proposals, reasons = await step.rewrite(seen, grads)
        proposed = [c for c in criteria if proposals.get(c)]
        candidate = {c: proposals.get(c) or state.instructions[c] for c in criteria}
        in_force = state.measured
        after = in_force
        diagnostics: dict[str, dict[str, float | None]] = {}
        if proposed:
            self._check_budget()
            gate_judged, diagnostics = await together(
                self.judge(self.gate_set, candidate, "gate", criteria=self.mode.judge.gate_criteria(proposed)),
                step.diagnose(grads, proposals) if self.spec.optimize.diagnostics else _nothing())
            after = in_force.updated(self.measure(gate_judged))  # the criteria judged again
        elif self.spec.optimize.diagnostics:
            diagnostics = await step.diagnose(grads, proposals)
        ctx = GateContext.of(self.spec)
        decision, kept, judged_again = await self.settle(ctx, in_force, after, choose(ctx, in_force, after, proposed),
                                                         proposed, candidate, state.instructions)
        if decision.keep and self.spec.optimize.gate.cases and self.cases:
            self._check_budget()
            keep = await self.case_gate(state.instructions, candidate, decision.keep, reasons)
            if keep != decision.keep:  # the case gate dropped some: what is left is a combination of its own
                dropped = {c: reasons[c] for c in decision.keep if c not in keep}
                decision = Decision(keep, {**decision.reasons, **dropped})
                if keep:
                    decision, kept, again = await self.settle(ctx, in_force, after, decision, proposed, candidate,
                                                              state.instructions)
                    judged_again = judged_again or again
        reasons.update(decision.reasons)
        compared = shared_documents(in_force, after)  # the values the rule compared (level group: shared documents)
        record = StepRecord(number, [r.id for r in batch], {c: proposals.get(c) for c in criteria}, reasons,
                            dict(compared[0].value), dict(compared[1].value), decision.keep,
                            {role: self._requests(role) - before[role] for role in ROLES if self._requests(role) - before[role]},
                            diagnostics, dict(step.failures), None if kept is None else dict(kept.value), judged_again,
                            {"before": in_force.failure_counts(), "after": after.failure_counts(),
                             **({} if kept is None else {"kept": kept.failure_counts()})})
        for c in decision.keep:
            state.instructions[c] = candidate[c]
        if decision.keep and kept is not None:
            state.set_measured(kept)  # what is in force now, as measured: every criterion's real val value
        state.rng = new_rng
        self.progress(f"step {number}: proposed {len(proposed)}, kept {', '.join(decision.keep) or 'none'}")
        return record

    async def settle(self, ctx: GateContext, in_force: Measured, after: Measured, decision: Decision,
                     proposed: Sequence[str], candidate: Mapping[str, str],
                     current: Mapping[str, str]) -> tuple[Decision, Measured | None, bool]:
        """The val gate on exactly the combination the rule kept: its values (judged again when it is a merged
        prompt holding only some of the rewrites), then ``confirm``. Returns the decision, the combination's
        values (None when nothing was kept) and whether it was judged again."""
        if not decision.keep:
            return decision, None, False
        known = combination(in_force, after, decision.keep, proposed, self.mode.judge.gate_criteria(proposed) is None)
        again = known is None
        if known is None:
            self._check_budget()
            chosen = {c: candidate[c] if c in decision.keep else current[c] for c in current}
            known = in_force.updated(self.measure(await self.judge(self.gate_set, chosen, "gate")))
        return confirm(ctx, in_force, known, decision, again), known, again

    async def case_gate(self, current: Mapping[str, str], candidate: Mapping[str, str], keep: list[str],
                        reasons: dict[str, str]) -> list[str]:
        """The second gate (``optimize.gate.cases``): the rewrites the val gate kept, minus any that break a case
        that passed with the current instructions. Cases are judged as their items judge them (the spec's shape).
        Under ``per_criterion`` a rewrite falls alone (the rest are judged again without it); otherwise, or when a
        case of an unchanged criterion breaks (a merged prompt), the step keeps nothing."""
        async def checks(instructions: Mapping[str, str]) -> list[list[Any]]:
            found = await judge_cases(self.llm, self.models["judge"], self.spec, self.cases, instructions, role="cases")
            failures = [ch.scored.failure for per_case in found for ch in per_case]
            if "call_budget" in failures:
                raise BudgetExceeded("the budget ran out while judging the cases")
            if "call_replay_miss" in failures:
                raise ReplayIncomplete(self.spec, f"the cases' judgments by {self.models['judge'].name}")
            return found

        before = await checks(current)
        passing = {(case.name, ch.criterion) for case, per_case in zip(self.cases, before, strict=True) for ch in per_case if ch.passed}
        keep = list(keep)
        while keep and passing:
            trial = {c: candidate[c] if c in keep else current[c] for c in current}
            broken: dict[str, str] = {}
            for case, per_case in zip(self.cases, await checks(trial), strict=True):
                for ch in per_case:
                    if (case.name, ch.criterion) in passing and not ch.passed:
                        broken.setdefault(ch.criterion, f"{case.item_name} breaks ({ch.reason()})")
            if not broken:
                break
            hit = [c for c in keep if c in broken]
            if self.spec.optimize.gate.rule != "per_criterion" or not hit:
                first = next(iter(broken.values()))
                reasons.update({c: f"rejected by the case gate: {first}" for c in keep})
                return []
            reasons.update({c: f"rejected by the case gate: {broken[c]}" for c in hit})
            keep = [c for c in keep if c not in hit]
        return keep

    def _requests(self, role: str) -> int:
        usage = self.llm.usage.get(role)
        return 0 if usage is None else usage.requests

    def _check_budget(self) -> None:
        if self.budget is not None and self.budget.over(self.llm.total()):
            raise BudgetExceeded("budget reached")


async def _nothing() -> dict[str, dict[str, float | None]]:
    return {}
