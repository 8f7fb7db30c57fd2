"""Textual-gradient optimization of a judge's instructions, in five decomposition modes.

One step: the judge scores a train batch; a loss model critiques each judgment; a gradient
model turns critiques into feedback on the instruction; an optimizer model rewrites it; a
gate on the val split keeps the rewrite only if agreement does not get worse. Each of loss,
gradient and optimizer works per criterion (S) or on all criteria at once (C); the five
modes are one table of per-stage strategies feeding one loop. What a call may contain
follows the mode: an S call carries only its own criterion's instruction, score and
critique. Train batches, the val gate and the test evaluation are disjoint by
construction (the splits are by document), and the test split is judged only at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import statistics
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from .data import Record
from .judge import Judged, judge_records, render_inputs, scale_text
from .llm import LLM, CallError, Usage
from .parse import json_objects
from .spec import OPTIMIZE_MODES, Model, Spec, mode_problem

ROLES = ("judge", "loss", "gradient", "optimizer", "gate", "diagnostics")
FEEDBACK_CHARS = 1500  # per critique or gradient quoted into a later prompt: keeps prompts bounded


@dataclass(frozen=True)
class Mode:
    name: str
    loss: str
    gradient: str
    optimizer: str

    @property
    def judge_shape(self) -> str:
        """ST optimizes each criterion with its own single-criterion judge; the rest use one joint judge call."""
        return "separate" if self.name == "ST" else "merged"


MODES = {name: Mode(name, *(("S", "S", "S") if name == "ST" else tuple(name))) for name in OPTIMIZE_MODES}


def get_mode(name: str) -> Mode:
    problem = mode_problem(name.upper())
    if problem:
        raise ValueError(f"{problem}; use one of {', '.join(OPTIMIZE_MODES)}")
    return MODES[name.upper()]


def planned_calls(mode: Mode, criteria: int, batch: int, val: int, diagnostics: bool = False) -> dict[str, int]:
    """Calls per step by role: the formula printed before a run and checked by the tests."""
    k = criteria
    calls = {
        "judge": k * batch if mode.judge_shape == "separate" else batch,
        "loss": k * batch if mode.loss == "S" else batch,
        "gradient": k * batch if mode.gradient == "S" else batch,
        "optimizer": k if mode.optimizer == "S" else 1,
        "gate": k * val if mode.judge_shape == "separate" else val,
    }
    if diagnostics:
        calls["diagnostics"] = 2 * k
    return calls


def formula(mode: Mode, diagnostics: bool = False) -> dict[str, str]:
    sep = mode.judge_shape == "separate"
    out = {"judge": "K*B" if sep else "B", "loss": "K*B" if mode.loss == "S" else "B",
           "gradient": "K*B" if mode.gradient == "S" else "B", "optimizer": "K" if mode.optimizer == "S" else "1",
           "gate": "K*V" if sep else "V"}
    if diagnostics:
        out["diagnostics"] = "2*K"
    return out


@dataclass(frozen=True)
class Budget:
    calls: int | None = None
    usd: float | None = None

    @classmethod
    def parse(cls, text: str) -> Budget:
        """``calls=500``, ``usd=2.5`` or both, comma-separated; a bare number is calls."""
        calls = usd = None
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, value = part.rpartition("=")
            key = key.strip().lower() or "calls"
            try:
                if key == "calls":
                    calls = int(value)
                elif key in ("usd", "dollars", "$"):
                    usd = float(value)
                else:
                    raise ValueError(key)
            except ValueError:
                raise ValueError(f"cannot read budget {part!r}: write calls=N and/or usd=X, e.g. calls=500,usd=2") from None
        if calls is None and usd is None:
            raise ValueError("an empty budget: write calls=N and/or usd=X")
        return cls(calls, usd)


class Allowance:
    """A budget as one optimization spends it: counted from the run's start, not the session's (a second
    spec, or a study's next run, gets its own cap), and a call counts when it is let through, not when it
    returns, so calls in flight together cannot overshoot the cap."""

    def __init__(self, budget: Budget, spent: Usage):
        self.budget = budget
        self.cost_before = spent.cost
        self.admitted = 0

    def over(self, total: Usage) -> bool:
        return ((self.budget.calls is not None and self.admitted >= self.budget.calls)
                or (self.budget.usd is not None and total.cost - self.cost_before >= self.budget.usd))

    def exceeded(self, total: Usage) -> bool:
        """The client's check before each model call (cache hits are not asked about): a call let through counts."""
        if self.over(total):
            return True
        self.admitted += 1
        return False


class BudgetExceeded(Exception):
    pass


class OptimizationBusy(Exception):
    pass


class ReplayIncomplete(Exception):
    """In replay mode, an answer the optimization needs is not in the cache. The run stops before any
    checkpoint or lock is written from it: a finished checkpoint would be taken as done by a later run."""

    def __init__(self, spec: Spec, what: str):
        from .answers import answers_path

        super().__init__(f"{spec.path.name}: the optimization needs answers that are not in the cache (cache mode is "
                         f"replay): {what}. Fix: record them with pytest --judge-optimize --judge-record (needs the "
                         f"model) and commit {answers_path(spec.path).name}")


# ---------------------------------------------------------------------------------------------
# prompts of the three roles and the diagnostics


def template(spec: Spec, name: str) -> str:
    """A role's prompt: the spec's override file if it names one, else ours."""
    override = spec.optimize.prompts.get(name)
    if override is not None:
        return override.read_text(encoding="utf-8")
    return resources.files("pytest_judgeopt").joinpath("prompts", f"{name}.txt").read_text(encoding="utf-8")


def fill(text: str, **values: Any) -> list[dict[str, str]]:
    return [{"role": "user", "content": text.format_map(values)}]


def clip(text: str | None, limit: int = FEEDBACK_CHARS) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else text[:limit] + " [...]"


def show(score: float | None) -> str:
    return "no usable score" if score is None else f"{score:g}"


def verdict(judge: float | None, human: float) -> str:
    if judge is None:
        return "The judge gave no usable score."
    diff = judge - human
    if abs(diff) < 0.5:
        return "The judge's score matches the human score."
    return f"The judge's score is {abs(diff):g} {'higher' if diff > 0 else 'lower'} than the human score."


@dataclass
class Seen:
    """One batch sample as the judge saw it: its reply (per criterion) and scores."""

    record: Record
    replies: dict[str, str | None]
    scores: dict[str, float | None]

    def score_table(self, criteria: Sequence[str]) -> str:
        lines = [f"- {c}: judge {show(self.scores[c])}, human {self.record.human[c]:g}. {verdict(self.scores[c], self.record.human[c])}"
                 for c in criteria]
        return "Scores:\n" + "\n".join(lines)

    def own_reply(self, criterion: str, mode: Mode) -> str:
        """In an S stage the judge's joint reply would leak other criteria's scores: show only this one."""
        if mode.judge_shape == "separate":
            return clip(self.replies[criterion], 300)
        return f"{criterion}: {show(self.scores[criterion])}"


@dataclass
class StepRecord:
    step: int
    batch: list[str]
    proposals: dict[str, str | None]
    rejected_reasons: dict[str, str]
    val_before: dict[str, float | None]
    val_after: dict[str, float | None]
    accepted: list[str]
    calls: dict[str, int]
    diagnostics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)


class Step:
    """The roles' calls for one step, written once for every mode: each stage asks the mode whether it is S or C."""

    def __init__(self, llm: LLM, spec: Spec, mode: Mode, models: Mapping[str, Model], instructions: Mapping[str, str]):
        self.llm = llm
        self.spec = spec
        self.mode = mode
        self.models = models
        self.instructions = dict(instructions)
        self.criteria = list(spec.criteria)
        self.failures: dict[str, int] = {}

    def tokens(self, share: float) -> int:
        """A role's reply length, as a share of ``optimize.max_tokens`` (a critique needs less than a rewrite)."""
        return max(16, round(self.spec.optimize.max_tokens * share))

    async def ask(self, role: str, messages: list[dict[str, str]], max_tokens: int) -> str | None:
        """One role call; a failed call is counted and yields None (its sample then carries no feedback)."""
        try:
            reply = await self.llm.complete(self.models[role], messages, role=role,
                                            temperature=self.spec.optimize.temperature, max_tokens=max_tokens,
                                            spec=self.spec.path)
        except CallError as exc:
            if exc.kind == "budget":
                raise BudgetExceeded(str(exc)) from None
            if exc.kind == "replay_miss":
                raise ReplayIncomplete(self.spec, f"a {role} call to {self.models[role].name}") from None
            self.failures[f"{role}:{exc.kind}"] = self.failures.get(f"{role}:{exc.kind}", 0) + 1
            return None
        text = reply.choices[0].text
        if not text or not text.strip():
            self.failures[f"{role}:empty"] = self.failures.get(f"{role}:empty", 0) + 1
            return None
        return text.strip()

    def instruction_list(self) -> str:
        return "\n".join(f"- {c}: {self.instructions[c]}" for c in self.criteria)

    # -- loss: critiques ---------------------------------------------------------------------
    async def critiques(self, seen: Seen) -> dict[str, str | None]:
        """Per criterion (S) or one critique for all (C, under the key '*')."""
        if self.mode.loss == "S":
            texts = await together(*[self.ask("loss", fill(
                template(self.spec, "loss"), criterion=c, scale=scale_text(self.spec.criteria[c].scale),
                sample=render_inputs(seen.record), judge_score=show(seen.scores[c]), human_score=f"{seen.record.human[c]:g}",
                verdict=verdict(seen.scores[c], seen.record.human[c])), self.tokens(0.5)) for c in self.criteria])
            return dict(zip(self.criteria, texts))
        text = await self.ask("loss", fill(template(self.spec, "loss_combined"), sample=render_inputs(seen.record),
                                           score_table=seen.score_table(self.criteria)), self.tokens(0.75))
        return {"*": text}

    # -- gradient: feedback on the instructions ----------------------------------------------
    async def gradients(self, seen: Seen, critiques: dict[str, str | None]) -> dict[str, str | None]:
        if self.mode.gradient == "S":
            async def one(c: str) -> str | None:
                if critiques.get(c) is None:
                    return None
                return await self.ask("gradient", fill(
                    template(self.spec, "gradient"), criterion=c, scale=scale_text(self.spec.criteria[c].scale),
                    instruction=self.instructions[c], sample=render_inputs(seen.record), judge_reply=seen.own_reply(c, self.mode),
                    judge_score=show(seen.scores[c]), human_score=f"{seen.record.human[c]:g}", critique=clip(critiques[c])), self.tokens(1))

            return dict(zip(self.criteria, await together(*[one(c) for c in self.criteria])))
        if all(v is None for v in critiques.values()):
            return {"*": None}
        if "*" in critiques:
            critique = f"(about all criteria)\n{clip(critiques['*'])}"
        else:
            critique = "\n\n".join(f"[{c}] {clip(critiques[c])}" for c in self.criteria if critiques.get(c))
        text = await self.ask("gradient", fill(
            template(self.spec, "gradient_combined"), instruction_list=self.instruction_list(),
            sample=render_inputs(seen.record), judge_reply=clip(next(iter(seen.replies.values())), 300),
            score_table=seen.score_table(self.criteria), critique=critique), self.tokens(1.25))
        return {"*": text}

    async def feedback(self, seen: Seen) -> dict[str, str | None]:
        """Loss then gradient for one sample: samples proceed independently, so the phases overlap."""
        return await self.gradients(seen, await self.critiques(seen))

    # -- optimizer: the rewrite ---------------------------------------------------------------
    def batch_text(self, seen: Sequence[Seen], criterion: str | None) -> str:
        blocks = []
        for i, s in enumerate(seen, 1):
            if criterion is None:
                scores = s.score_table(self.criteria)
            else:
                scores = f"{criterion}: judge {show(s.scores[criterion])}, human {s.record.human[criterion]:g}"
            blocks.append(f"[text {i}]\n{clip(render_inputs(s.record), 2500)}\n{scores}")
        return "\n\n".join(blocks)

    async def rewrite(self, seen: Sequence[Seen], grads: Sequence[dict[str, str | None]]) -> tuple[dict[str, str | None], dict[str, str]]:
        """New instructions (None where there is none to try) and why a proposal was dropped."""
        limit = self.spec.optimize.max_instruction_chars
        reasons: dict[str, str] = {}
        if self.mode.optimizer == "S":
            async def one(c: str) -> str | None:
                # numbered before texts without feedback are dropped, so each note names the text it is about
                notes = [(i, g[c]) for i, g in enumerate(grads, 1) if g.get(c)]
                if not notes:
                    reasons[c] = "no feedback reached the optimizer"
                    return None
                feedback = "\n\n".join(f"[text {i}] {clip(n)}" for i, n in notes)
                reply = await self.ask("optimizer", fill(
                    template(self.spec, "optimizer"), criterion=c, scale=scale_text(self.spec.criteria[c].scale),
                    instruction=self.instructions[c], batch=self.batch_text(seen, c), feedback=feedback, max_chars=limit), self.tokens(1.5))
                return self.checked(c, tagged_instruction(reply), reasons)

            return dict(zip(self.criteria, await together(*[one(c) for c in self.criteria]))), reasons
        if self.mode.gradient == "S":
            notes = [f"[text {i}, {c}] {clip(g[c])}" for i, g in enumerate(grads, 1) for c in self.criteria if g.get(c)]
        else:
            notes = [f"[text {i}] {clip(g['*'])}" for i, g in enumerate(grads, 1) if g.get("*")]
        if not notes:
            return dict.fromkeys(self.criteria), dict.fromkeys(self.criteria, "no feedback reached the optimizer")
        reply = await self.ask("optimizer", fill(
            template(self.spec, "optimizer_combined"), instruction_list=self.instruction_list(), batch=self.batch_text(seen, None),
            feedback="\n\n".join(notes), max_chars=limit, criteria_keys=", ".join(json.dumps(c) for c in self.criteria)),
            self.tokens(0.75 * len(self.criteria)))
        proposed = instruction_object(reply, self.criteria)
        return {c: self.checked(c, proposed.get(c), reasons) for c in self.criteria}, reasons

    def checked(self, criterion: str, text: str | None, reasons: dict[str, str]) -> str | None:
        if text is None:
            reasons[criterion] = "the optimizer's reply held no instruction"
            return None
        text = text.strip()
        if not text:
            reasons[criterion] = "the optimizer returned an empty instruction"
        elif len(text) > self.spec.optimize.max_instruction_chars:
            reasons[criterion] = f"the new instruction has {len(text)} characters, over max_instruction_chars"
        elif text == self.instructions[criterion]:
            reasons[criterion] = "the optimizer returned the instruction unchanged"
        else:
            return text
        return None

    # -- diagnostics --------------------------------------------------------------------------
    async def diagnose(self, grads: Sequence[dict[str, str | None]], proposals: Mapping[str, str | None]) -> dict[str, dict[str, float | None]]:
        """Gradient specificity and feedback adherence (method.md), rated 1-10 by the diagnostics model."""
        async def one(c: str) -> tuple[str, dict[str, float | None]]:
            key = c if self.mode.gradient == "S" else "*"
            feedback = "\n\n".join(clip(g[key]) for g in grads if g.get(key))
            if not feedback:
                return c, {"specificity": None, "adherence": None}
            spec_reply = self.ask("diagnostics", fill(template(self.spec, "specificity"), criterion=c, feedback=feedback,
                                                      definition=self.instructions[c]), 60)
            if proposals.get(c):
                adh_reply = self.ask("diagnostics", fill(template(self.spec, "adherence"), old=self.instructions[c],
                                                         feedback=feedback, new=proposals[c]), 60)
                specificity, adherence = await together(spec_reply, adh_reply)
            else:
                specificity, adherence = await spec_reply, None
            return c, {"specificity": rating(specificity), "adherence": rating(adherence)}

        return dict(await together(*[one(c) for c in self.criteria]))


def tagged_instruction(reply: str | None) -> str | None:
    if reply is None:
        return None
    found = re.findall(r"<instruction>(.*?)</instruction>", reply, re.S)
    return found[-1] if found else None


def instruction_object(reply: str | None, criteria: Sequence[str]) -> dict[str, str]:
    for obj in json_objects(reply or ""):
        found = {c: obj[c] for c in criteria if isinstance(obj.get(c), str)}
        if found:
            return found
    return {}


def rating(reply: str | None) -> float | None:
    """The first integer 1-10 in the diagnostics model's reply, as method.md defines the score."""
    match = re.search(r"(?<!\d)(10|[1-9])(?!\d)", reply or "")
    return float(match.group(1)) if match else None


# ---------------------------------------------------------------------------------------------
# the gate


def gate_values(judged: Judged, metric: str) -> dict[str, float | None]:
    from .stats import correlation, mae

    out: dict[str, float | None] = {}
    for c, judgments in judged.judgments.items():
        ok = [j for j in judgments if j.score is not None]
        if metric == "none":
            out[c] = None
        elif metric == "mae":
            out[c] = mae([j.score for j in ok], [j.human for j in ok]) if ok else None
        else:
            value, _, _, _ = correlation(metric, [j.score for j in ok], [j.human for j in ok]) if len(ok) >= 3 else (None, 0, 0, "")
            out[c] = value
    return out


def score(value: float | None, metric: str) -> float:
    """Higher is better; an undefined value is the worst."""
    if value is None:
        return float("-inf")
    return -value if metric == "mae" else value


def accepted(gate: Any, before: Mapping[str, float | None], after: Mapping[str, float | None], proposed: Sequence[str]) -> list[str]:
    """Which proposals to keep, by the spec's rule; a rule over several criteria is all or nothing."""
    if not proposed:
        return []
    if gate.metric == "none":
        return list(proposed)
    b = {c: score(before[c], gate.metric) for c in before}
    a = {c: score(after[c], gate.metric) for c in after}
    if gate.rule == "per_criterion":
        return [c for c in proposed if a[c] >= b[c]]
    if gate.rule == "no_regression":
        ok = all(a[c] >= b[c] - gate.tolerance for c in b) and any(a[c] > b[c] for c in proposed)
        return list(proposed) if ok else []
    floor = -1.0 if gate.metric != "mae" else -10.0  # mean rule: an undefined criterion counts as the worst value
    mean_before = statistics.fmean(max(v, floor) for v in b.values())
    mean_after = statistics.fmean(max(v, floor) for v in a.values())
    return list(proposed) if mean_after >= mean_before else []


# ---------------------------------------------------------------------------------------------
# the loop, its checkpoint and its result


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

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rng"] = [self.rng[0], list(self.rng[1]), self.rng[2]]
        data["version"] = 1
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        rng = (data["rng"][0], tuple(data["rng"][1]), data["rng"][2])
        history = [StepRecord(**h) for h in data["history"]]
        return cls(data["run_key"], data["mode"], data["initial"], data["instructions"], data["val"], rng, history,
                   data["finished"], data["stopped"])


def run_key(spec: Spec, data_digest: str, mode: Mode, models: Mapping[str, Model], sample: int | None, seed: int,
            steps: int | None = None) -> str:
    """Everything a finished run depends on: the same key means the same run, which is not repeated.

    The step count is the one run (``--judge-steps`` may override the spec's): a finished 1-step run is
    not the answer to a request for 4 steps, nor a 4-step run to a request for 1.
    """
    settings = asdict(spec.optimize)
    settings["prompts"] = {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in spec.optimize.prompts.items()}
    settings.update(mode=mode.name, seed=seed, steps=steps or spec.optimize.steps)
    payload = {"spec": hashlib.sha256(spec.path.read_bytes()).hexdigest(), "data": data_digest, "settings": settings,
               "models": {r: m.describe() for r, m in sorted(models.items())}, "sample": sample}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class CriterionOutcome:
    name: str
    initial: str
    final: str
    accepted_steps: list[int]
    val_before: float | None
    val_after: float | None
    test_before: Any
    test_after: Any
    test_diff: Any
    specificity: float | None
    adherence: float | None

    def to_json(self) -> dict[str, Any]:
        def agreement(a: Any) -> dict[str, Any]:
            return {"value": a.value, "low": a.low, "high": a.high, "n": a.n, "reason": a.reason}

        d = self.test_diff
        return {"initial": self.initial, "final": self.final, "accepted_steps": self.accepted_steps,
                "val_before": self.val_before, "val_after": self.val_after,
                "test_before": agreement(self.test_before), "test_after": agreement(self.test_after),
                "test_diff": {"value": d.diff, "low": d.low, "high": d.high, "n": d.n, "reason": d.reason},
                "specificity": self.specificity, "adherence": self.adherence}


@dataclass
class OptimizationResult:
    spec: Spec
    mode: Mode
    seed: int
    steps_run: int
    stopped: str | None
    resumed_from: int
    outcomes: dict[str, CriterionOutcome]
    history: list[StepRecord]
    planned: dict[str, int]
    usage: dict[str, dict[str, Any]]
    models: dict[str, str]
    split_sizes: dict[str, int]
    reused: bool = False
    lock_path: Path | None = None
    lock_note: str | None = None

    @property
    def instructions(self) -> dict[str, str]:
        return {c: o.final for c, o in self.outcomes.items()}

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec.name, "mode": self.mode.name, "seed": self.seed, "steps_run": self.steps_run,
                "stopped": self.stopped, "resumed_from": self.resumed_from, "reused": self.reused,
                "planned_calls_per_step": self.planned, "usage": self.usage, "models": self.models,
                "split_sizes": self.split_sizes, "criteria": {c: o.to_json() for c, o in self.outcomes.items()},
                "history": [asdict(h) for h in self.history]}


def specificity_of(history: Sequence[StepRecord], criterion: str, key: str) -> float | None:
    values = [h.diagnostics.get(criterion, {}).get(key) for h in history]
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


class Optimization:
    """One optimization run of one spec in one mode; resumable from its checkpoint after every step."""

    def __init__(self, llm: LLM, spec: Spec, mode: Mode, models: Mapping[str, Model], *, train: Sequence[Record],
                 val: Sequence[Record], checkpoint: Path, key: str, seed: int, steps: int | None = None,
                 budget: Allowance | None = None, progress: Any = None):
        self.llm = llm
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
            self.progress(f"checkpoint {self.checkpoint} is unreadable; starting over")
            return None
        return state if state.run_key == self.key else None

    def save_state(self, state: State) -> None:
        from .files import write_atomic

        write_atomic(self.checkpoint, json.dumps(state.to_json(), indent=1, sort_keys=True))

    async def judge(self, records: Sequence[Record], instructions: Mapping[str, str], role: str,
                    criteria: Sequence[str] | None = None) -> Judged:
        judged = await judge_records(self.llm, self.models["judge"], self.spec, records, instructions,
                                     criteria=criteria, shape=self.mode.judge_shape, role=role)
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
                val = gate_values(self.llm.run(self.judge(self.gate_set, initial, "gate")), self.spec.optimize.gate.metric)
            except BudgetExceeded:
                val = dict.fromkeys(initial)
                state = State(self.key, self.mode.name, initial, dict(initial), val, random.Random(self.seed).getstate(),
                              stopped="budget", finished=True)
                self.save_state(state)
                return state, 0
            state = State(self.key, self.mode.name, initial, dict(initial), val, random.Random(self.seed).getstate())
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
        step = Step(self.llm, self.spec, self.mode, self.models, state.instructions)
        self._check_budget()
        judged = await self.judge(batch, state.instructions, "judge")
        seen = []
        for i, record in enumerate(batch):
            js = {c: judged.judgments[c][i] for c in criteria}
            seen.append(Seen(record, {c: js[c].reply for c in criteria}, {c: js[c].score for c in criteria}))
        self._check_budget()
        grads = await together(*[step.feedback(s) for s in seen])
        self._check_budget()
        proposals, reasons = await step.rewrite(seen, grads)
        proposed = [c for c in criteria if proposals.get(c)]
        candidate = {c: proposals.get(c) or state.instructions[c] for c in criteria}
        val_after = dict(state.val)
        diagnostics: dict[str, dict[str, float | None]] = {}
        if proposed:
            self._check_budget()
            gate_judged, diagnostics = await together(
                self.judge(self.gate_set, candidate, "gate", criteria=proposed if self.mode.judge_shape == "separate" else None),
                step.diagnose(grads, proposals) if self.spec.optimize.diagnostics else _nothing())
            val_after.update({c: v for c, v in gate_values(gate_judged, self.spec.optimize.gate.metric).items() if c in proposed or
                              self.mode.judge_shape == "merged"})
        elif self.spec.optimize.diagnostics:
            diagnostics = await step.diagnose(grads, proposals)
        keep = accepted(self.spec.optimize.gate, state.val, val_after, proposed)
        for c in proposed:
            if c not in keep:
                reasons[c] = "rejected by the val gate"
        record = StepRecord(number, [r.id for r in batch], {c: proposals.get(c) for c in criteria}, reasons,
                            dict(state.val), val_after, keep,
                            {role: self._requests(role) - before[role] for role in ROLES if self._requests(role) - before[role]},
                            diagnostics, dict(step.failures))
        for c in keep:
            state.instructions[c] = proposals[c]
        if keep:
            # A partial acceptance forms a combination the gate did not judge as a whole; the per-criterion
            # values it measured are kept as the best estimate, re-measured by the next step's gate.
            state.val = {c: (val_after[c] if c in keep else state.val[c]) for c in criteria}
        state.rng = new_rng
        self.progress(f"step {number}: proposed {len(proposed)}, kept {', '.join(keep) or 'none'}")
        return record

    def _requests(self, role: str) -> int:
        usage = self.llm.usage.get(role)
        return 0 if usage is None else usage.requests

    def _check_budget(self) -> None:
        if self.budget is not None and self.budget.over(self.llm.total()):
            raise BudgetExceeded("budget reached")


async def _nothing() -> dict[str, dict[str, float | None]]:
    return {}


async def together(*work: Awaitable[Any]) -> list[Any]:
    """``asyncio.gather`` that, when one fails, waits for the rest before raising. After a budget stop the
    siblings' next calls are refused by the budget still in force; left running, they would call the model
    unbudgeted once the run had ended (cancelling them instead would cut litellm off mid-request)."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


# ---------------------------------------------------------------------------------------------
# a whole run: plan, loop (resumable), test evaluation, lock file


def optimize_spec(session: Any, loaded: Any, mode_name: str | None = None, *, seed: int | None = None,
                  steps: int | None = None, budget: Budget | None = None, write: bool = False) -> OptimizationResult:
    """Optimize on train, gate on val, then compare initial and final instructions on test."""
    import copy
    import fcntl

    from .stats import paired_difference

    mode = get_mode(mode_name or loaded.spec.optimize.mode)
    spec: Spec = with_gate_rule(loaded.spec, mode)
    seed = spec.optimize.seed if seed is None else seed
    models = {role: session.model_for(spec, role) for role in ("judge", "loss", "gradient", "optimizer", "diagnostics")}
    train, val = session.records(loaded, "train"), session.records(loaded, "val")
    if not train or not val:
        raise ValueError(f"{spec.path}: optimization needs train and val samples (train {len(train)}, val {len(val)}); "
                         "give split.train and split.val fractions above 0")
    key = run_key(spec, loaded.dataset.digest, mode, models, session.sample, seed, steps)
    checkpoint = session.state_dir / "runs" / f"{spec.path.name}-{mode.name}-{key[:16]}.json"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    progress = session.progress or (lambda text: None)
    usage_before = copy.deepcopy(session.llm.usage)
    with open(checkpoint.with_suffix(".lock"), "w") as guard:
        try:
            fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OptimizationBusy(f"another process is optimizing {spec.path.name} in mode {mode.name} with these "
                                   "settings; wait for it to finish (its checkpoint is shared, so nothing is lost)") from None
        allowance = None if budget is None else Allowance(budget, session.llm.total())
        run = Optimization(session.llm, spec, mode, models, train=train, val=val, checkpoint=checkpoint, key=key,
                           seed=seed, steps=steps, budget=allowance, progress=progress)
        planned = run.planned()
        progress(plan_text(spec, mode, planned, run.steps, len(train), len(val), models["judge"]))
        session.llm.budget = allowance
        try:
            state, resumed_from = run.run()
        finally:
            session.llm.budget = None
    initial, final = state.initial, state.instructions
    names = list(spec.criteria)
    shape = mode.judge_shape
    sources = dict.fromkeys(names, "optimization")
    before = session.evaluate_instructions(loaded, initial, names, split="test", shape=shape, sources=sources)
    after = session.evaluate_instructions(loaded, final, names, split="test", shape=shape, sources=sources)
    missing = sum(r.failures.get("call_replay_miss", 0) for r in (*before.values(), *after.values()))
    if missing:  # no lock from a test evaluation that did not happen
        raise ReplayIncomplete(spec, f"{missing} judgments of the test split")
    outcomes = {}
    for c in names:
        b = {j.record_id: j for j in before[c].judgments}
        both = [(b[j.record_id], j) for j in after[c].judgments if j.score is not None and b[j.record_id].score is not None]
        diff = paired_difference(spec.correlation.method, [x.score for x, _ in both], [y.score for _, y in both],
                                 [x.human for x, _ in both], groups=[x.group for x, _ in both] if spec.dataset.group else None,
                                 level=spec.correlation.level, confidence=spec.correlation.confidence,
                                 resamples=spec.correlation.resamples, seed=seed)
        outcomes[c] = CriterionOutcome(c, initial[c], final[c], [h.step for h in state.history if c in h.accepted],
                                       state.history[0].val_before[c] if state.history else state.val[c], state.val[c],
                                       before[c].agreement, after[c].agreement, diff,
                                       specificity_of(state.history, c, "specificity"),
                                       specificity_of(state.history, c, "adherence"))
    spent = {role: u.minus(usage_before.get(role, Usage())) for role, u in session.llm.usage.items()}
    usage = {role: u.to_json() for role, u in sorted(spent.items()) if u.requests}
    result = OptimizationResult(spec, mode, seed, len(state.history), state.stopped, resumed_from, outcomes,
                                state.history, planned, usage, {r: m.describe() for r, m in models.items()},
                                {"train": len(train), "val": len(val), "test": len(session.records(loaded, "test"))},
                                reused=resumed_from == len(state.history) and resumed_from > 0)
    if write:
        from .lockfile import write_lock

        result.lock_path, result.lock_note = write_lock(result, loaded.dataset.digest)
        if result.lock_note:
            session.notes.append(result.lock_note)
    return result


def with_gate_rule(spec: Spec, mode: Mode) -> Spec:
    """The spec with the gate rule of the mode actually run, unless the spec names a rule: its default was
    chosen from ``optimize.mode``, but ``--judge-mode`` and the study run other modes, and a joint rewrite
    must not be accepted criterion by criterion, nor a separate one held back by another criterion's loss."""
    if spec.line_of("optimize", "gate", "rule") is not None:
        return spec
    rule = "per_criterion" if mode.optimizer == "S" else "no_regression"
    return replace(spec, optimize=replace(spec.optimize, gate=replace(spec.optimize.gate, rule=rule)))


def plan_text(spec: Spec, mode: Mode, planned: Mapping[str, int], steps: int, train: int, val: int, judge: Model) -> str:
    """The calls a run will make, per role and step, from the mode's formula; dollars where litellm knows the price."""
    terms = formula(mode, spec.optimize.diagnostics)
    per_step = sum(planned.values())
    parts = ", ".join(f"{role} {terms[role]}={n}" for role, n in planned.items())
    text = (f"optimizing {spec.name} in mode {mode.name}: K={len(spec.criteria)} criteria, B={min(spec.optimize.batch_size, train)}, "
            f"V={val} val samples; per step {parts}: {per_step} calls; {steps} steps: at most {per_step * steps} calls "
            f"(+{planned['gate']} to judge val first, and the test split before and after)")
    price = estimate_cost(judge, per_step * steps)
    return text + (f"; estimated cost ${price:.2f}" if price is not None else "; cost unknown for this model")


def estimate_cost(model: Model, calls: int, prompt_tokens: int = 800, completion_tokens: int = 200) -> float | None:
    """Rough: typical tokens per call times litellm's price list; None when litellm has no price."""
    from .llm import import_litellm

    try:
        prompt, completion = import_litellm().cost_per_token(model=model.name, prompt_tokens=prompt_tokens,
                                                             completion_tokens=completion_tokens)
    except Exception:  # noqa: BLE001 - litellm raises for models it has no price for
        return None
    return calls * (prompt + completion)


# ---------------------------------------------------------------------------------------------
# the mode study


@dataclass
class Study:
    spec_name: str
    runs: int
    steps: int
    test_size: int
    method: str
    level: str
    rows: list[dict[str, Any]]
    results: list[OptimizationResult]

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec_name, "runs": self.runs, "steps": self.steps, "test_size": self.test_size,
                "method": self.method, "level": self.level, "rows": self.rows}


def run_study(session: Any, path: Any, *, modes: Sequence[str] = OPTIMIZE_MODES, runs: int | None = None,
              steps: int | None = None, budget: Budget | None = None) -> Study:
    """Every mode, several seeds, diagnostics on: which decomposition works for this judge. Writes no lock."""
    from dataclasses import replace

    loaded = session.load(path)
    spec = replace(loaded.spec, optimize=replace(loaded.spec.optimize, diagnostics=True))
    loaded = replace(loaded, spec=spec)
    runs = runs or spec.optimize.study_runs
    results = [optimize_spec(session, loaded, mode, seed=spec.optimize.seed + i, steps=steps, budget=budget)
               for mode in modes for i in range(runs)]
    rows = []
    for mode in modes:
        mine = [r for r in results if r.mode.name == mode]
        calls = statistics.fmean(sum(u["requests"] for u in r.usage.values()) for r in mine)
        costs = [sum(u["cost_usd"] for u in r.usage.values()) if all(u["cost_usd"] is not None for u in r.usage.values())
                 else None for r in mine]
        for c in spec.criteria:
            after = [r.outcomes[c].test_after.value for r in mine if r.outcomes[c].test_after.value is not None]
            spec_values = [r.outcomes[c].specificity for r in mine if r.outcomes[c].specificity is not None]
            rows.append({
                "mode": mode, "criterion": c, "before": mine[0].outcomes[c].test_before.value,
                "after_mean": statistics.fmean(after) if after else None,
                "after_sd": statistics.stdev(after) if len(after) > 1 else None,
                "improved_steps": statistics.fmean(len(r.outcomes[c].accepted_steps) for r in mine),
                "specificity": statistics.fmean(spec_values) if spec_values else None,
                "calls": calls, "cost": None if None in costs else statistics.fmean(costs),
            })
    return Study(spec.name, runs, steps or spec.optimize.steps, len(session.records(loaded, "test")),
                 spec.correlation.method, spec.correlation.level, rows, results)
