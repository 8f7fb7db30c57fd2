"""The stage strategies a mode is made of: each knows what its calls contain and how many it makes.

A separate (S) stage makes one call per criterion, and the call carries only that criterion's
instruction, score and critique; a combined (C) stage makes one call about all criteria. The
judge is asked the same two ways: each criterion alone (ST) or in one joint call. The counts
declared here are the ones printed before a run and the ones the tests measure on the wire.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..judge import render_inputs, scale_text
from .protocol import StepContext, Texts
from .roles import (
    Seen,
    clip,
    fill,
    instruction_object,
    show,
    tagged_instruction,
    template,
    verdict,
)
from .step import together


@dataclass(frozen=True)
class Count:
    """A count of calls per step as a product of the run's sizes: ``per`` names them (K criteria, B batch
    samples, V val samples), ``times`` a constant factor."""

    per: tuple[str, ...] = ()
    times: int = 1

    @property
    def formula(self) -> str:
        return "*".join([str(self.times)] * (self.times != 1) + list(self.per)) or "1"

    def count(self, sizes: Mapping[str, int]) -> int:
        return self.times * math.prod(sizes[name] for name in self.per)


# ---------------------------------------------------------------------------------------------
# how the judge is asked


class SeparateJudge:
    """Each criterion judged alone by its own single-criterion prompt (ST)."""

    shape = "separate"
    label = "separate (a single-criterion judge each)"
    calls = Count(("K", "B"))
    gate_calls = Count(("K", "V"))
    combination_calls = None  # each criterion's prompt is its own: a kept subset was judged as it is

    def gate_criteria(self, proposed: Sequence[str]) -> list[str] | None:
        return list(proposed)  # an unchanged criterion's prompt is unchanged, so is its val result

    def own_reply(self, seen: Seen, criterion: str) -> str:
        return clip(seen.replies[criterion], 300)


class JointJudge:
    """All criteria in one joint judge call per sample."""

    shape = "merged"
    label = "joint (one judge call for all)"
    calls = Count(("B",))
    gate_calls = Count(("V",))
    combination_calls = Count(("V",))  # a merged prompt holding only the kept rewrites is judged once more

    def gate_criteria(self, proposed: Sequence[str]) -> list[str] | None:
        return None  # one call judges every criterion, rewritten or not

    def own_reply(self, seen: Seen, criterion: str) -> str:
        # the joint reply would leak other criteria's scores into an S stage: show only this one
        return f"{criterion}: {show(seen.scores[criterion])}"


# ---------------------------------------------------------------------------------------------
# loss: critiques of the judgments


class SeparateLoss:
    per_criterion = True
    calls = Count(("K", "B"))

    async def critiques(self, step: StepContext, seen: Seen) -> Texts:
        texts = await together(*[step.ask("loss", fill(
            template(step.spec, "loss"), criterion=c, scale=scale_text(step.spec.criteria[c].scale),
            sample=render_inputs(seen.record), judge_score=show(seen.scores[c]), human_score=f"{seen.record.human[c]:g}",
            verdict=verdict(seen.scores[c], seen.record.human[c])), step.tokens(0.5)) for c in step.criteria])
        return dict(zip(step.criteria, texts, strict=True))

    def critique_of(self, critiques: Texts, criterion: str) -> str | None:
        return critiques.get(criterion)

    def joint_critique(self, critiques: Texts, criteria: Sequence[str]) -> str:
        return "\n\n".join(f"[{c}] {clip(critiques[c])}" for c in criteria if critiques.get(c))


class CombinedLoss:
    per_criterion = False
    calls = Count(("B",))

    async def critiques(self, step: StepContext, seen: Seen) -> Texts:
        text = await step.ask("loss", fill(template(step.spec, "loss_combined"), sample=render_inputs(seen.record),
                                           score_table=seen.score_table(step.criteria)), step.tokens(0.75))
        return {"*": text}

    def critique_of(self, critiques: Texts, criterion: str) -> str | None:
        return critiques.get("*")  # the one critique there is, about all criteria

    def joint_critique(self, critiques: Texts, criteria: Sequence[str]) -> str:
        # not labelled with the first criterion's name: it is about all of them
        return f"(about all criteria)\n{clip(critiques['*'])}"


# ---------------------------------------------------------------------------------------------
# gradient: feedback on the instructions


class SeparateGradient:
    per_criterion = True
    calls = Count(("K", "B"))

    async def gradients(self, step: StepContext, seen: Seen, critiques: Texts) -> Texts:
        loss = step.mode.loss

        async def one(c: str) -> str | None:
            critique = loss.critique_of(critiques, c)
            if critique is None:
                return None
            return await step.ask("gradient", fill(
                template(step.spec, "gradient"), criterion=c, scale=scale_text(step.spec.criteria[c].scale),
                instruction=step.instructions[c], sample=render_inputs(seen.record),
                judge_reply=step.mode.judge.own_reply(seen, c), judge_score=show(seen.scores[c]),
                human_score=f"{seen.record.human[c]:g}", critique=clip(critique)), step.tokens(1))

        return dict(zip(step.criteria, await together(*[one(c) for c in step.criteria]), strict=True))

    def notes_on(self, grads: Sequence[Texts], criterion: str) -> list[tuple[int, str]]:
        # numbered before texts without feedback are dropped, so each note names the text it is about
        return [(i, note) for i, g in enumerate(grads, 1) if (note := g.get(criterion))]

    def all_notes(self, grads: Sequence[Texts], criteria: Sequence[str]) -> list[str]:
        return [f"[text {i}, {c}] {clip(g[c])}" for i, g in enumerate(grads, 1) for c in criteria if g.get(c)]


class CombinedGradient:
    per_criterion = False
    calls = Count(("B",))

    async def gradients(self, step: StepContext, seen: Seen, critiques: Texts) -> Texts:
        if all(v is None for v in critiques.values()):
            return {"*": None}
        text = await step.ask("gradient", fill(
            template(step.spec, "gradient_combined"), instruction_list=step.instruction_list(),
            sample=render_inputs(seen.record), judge_reply=clip(next(iter(seen.replies.values())), 300),
            score_table=seen.score_table(step.criteria),
            critique=step.mode.loss.joint_critique(critiques, step.criteria)), step.tokens(1.25))
        return {"*": text}

    def notes_on(self, grads: Sequence[Texts], criterion: str) -> list[tuple[int, str]]:
        return [(i, note) for i, g in enumerate(grads, 1) if (note := g.get("*"))]

    def all_notes(self, grads: Sequence[Texts], criteria: Sequence[str]) -> list[str]:
        return [f"[text {i}] {clip(note)}" for i, note in self.notes_on(grads, "*")]


# ---------------------------------------------------------------------------------------------
# optimizer: the rewrite


class SeparateOptimizer:
    per_criterion = True
    calls = Count(("K",))

    async def rewrite(self, step: StepContext, seen: Sequence[Seen], grads: Sequence[Texts]) -> tuple[Texts, dict[str, str]]:
        reasons: dict[str, str] = {}

        async def one(c: str) -> str | None:
            notes = step.mode.gradient.notes_on(grads, c)
            if not notes:
                reasons[c] = "no feedback reached the optimizer"
                return None
            feedback = "\n\n".join(f"[text {i}] {clip(n)}" for i, n in notes)
            reply = await step.ask("optimizer", step.with_cases(fill(
                template(step.spec, "optimizer"), criterion=c, scale=scale_text(step.spec.criteria[c].scale),
                instruction=step.instructions[c], batch=step.batch_text(seen, c), feedback=feedback,
                max_chars=step.spec.optimize.max_instruction_chars), c), step.tokens(1.5))
            return step.checked(c, tagged_instruction(reply), reasons)

        return dict(zip(step.criteria, await together(*[one(c) for c in step.criteria]), strict=True)), reasons


class CombinedOptimizer:
    per_criterion = False
    calls = Count()

    async def rewrite(self, step: StepContext, seen: Sequence[Seen], grads: Sequence[Texts]) -> tuple[Texts, dict[str, str]]:
        reasons: dict[str, str] = {}
        notes = step.mode.gradient.all_notes(grads, step.criteria)
        if not notes:
            return dict.fromkeys(step.criteria), dict.fromkeys(step.criteria, "no feedback reached the optimizer")
        reply = await step.ask("optimizer", step.with_cases(fill(
            template(step.spec, "optimizer_combined"), instruction_list=step.instruction_list(),
            batch=step.batch_text(seen, None), feedback="\n\n".join(notes),
            max_chars=step.spec.optimize.max_instruction_chars,
            criteria_keys=", ".join(json.dumps(c) for c in step.criteria)), None), step.tokens(0.75 * len(step.criteria)))
        proposed = instruction_object(reply, step.criteria)
        return {c: step.checked(c, proposed.get(c), reasons) for c in step.criteria}, reasons
