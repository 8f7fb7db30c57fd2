"""One step's role calls: the context every stage calls the models through, and the diagnostics.

The step holds the instructions in force, makes each role call (a failed call is counted and
yields None, so its sample carries no feedback), checks the rewrites that come back and runs a
sample's loss then gradient; which calls those are is the mode's stage strategies' business.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from ..cases import Case
from ..judge import render_inputs
from ..llm import LLM, CallError
from ..spec import Model, Spec
from .budget import BudgetExceeded
from .errors import ReplayIncomplete
from .protocol import Stages, Texts
from .roles import Seen, clip, fill, rating, show, template


class Step:
    """The roles' calls for one step, written once for every mode: each stage is the mode's strategy."""

    def __init__(self, llm: LLM, spec: Spec, mode: Stages, models: Mapping[str, Model], instructions: Mapping[str, str],
                 cases: Sequence[Case] = (), *, seed: int | None = None):
        self.llm = llm
        # the run's seed, sent with every role call: at a temperature above 0 the roles' answers are draws, and a
        # mode study's runs (one seed each) must draw their own, not replay each other's from the cache
        self.seed = seed
        # what the optimizer role is shown of the cases: nothing, unless the spec says optimize.cases_in_prompt
        self.cases = list(cases) if spec.optimize.cases_in_prompt else []
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
                                            seed=self.seed, spec=self.spec.path)
        except CallError as exc:
            if exc.kind == "budget":
                raise BudgetExceeded(str(exc)) from None
            if exc.kind == "replay_miss":
                raise ReplayIncomplete(self.spec, f"a {role} call to {self.models[role].name}") from None
            if exc.refused:  # the role's model refuses every call (a key, a provider): the run cannot go on
                raise
            self.failures[f"{role}:{exc.kind}"] = self.failures.get(f"{role}:{exc.kind}", 0) + 1
            return None
        text = reply.choices[0].text
        if not text or not text.strip():
            self.failures[f"{role}:empty"] = self.failures.get(f"{role}:empty", 0) + 1
            return None
        return text.strip()

    def instruction_list(self) -> str:
        return "\n".join(f"- {c}: {self.instructions[c]}" for c in self.criteria)

    def batch_text(self, seen: Sequence[Seen], criterion: str | None) -> str:
        """The batch as the optimizer sees it: each text with its scores (one criterion's, or all)."""
        blocks = []
        for i, s in enumerate(seen, 1):
            if criterion is None:
                scores = s.score_table(self.criteria)
            else:
                scores = f"{criterion}: judge {show(s.scores[criterion])}, human {s.record.human[criterion]:g}"
            blocks.append(f"[text {i}]\n{clip(render_inputs(s.record), 2500)}\n{scores}")
        return "\n\n".join(blocks)

    def checked(self, criterion: str, text: str | None, reasons: dict[str, str]) -> str | None:
        """A rewrite worth gating, or None with the reason in ``reasons``."""
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

    def with_cases(self, messages: list[dict[str, str]], criterion: str | None) -> list[dict[str, str]]:
        """The optimizer's prompt with the cases it must keep right (the criterion's own, in an S stage), when the
        spec opts in with ``optimize.cases_in_prompt``; otherwise unchanged: cases never enter a role prompt."""
        from ..scoring import as_record

        shown = [c for c in self.cases if criterion is None or criterion in c.expect]
        if not shown:
            return messages
        blocks = []
        for case in shown:
            wanted = ", ".join(f"{name} {exp}" for name, exp in case.expect.items() if criterion in (None, name))
            blocks.append(f"[{case.item_name}: {wanted}]\n{clip(render_inputs(as_record(case.name, case.inputs, self.spec)), 1500)}")
        note = ("Cases the judge must keep getting right with the new instruction (its score must stay in the range "
                "given):\n\n" + "\n\n".join(blocks))
        return [*messages[:-1], {**messages[-1], "content": f"{messages[-1]['content']}\n\n{note}"}]

    async def feedback(self, seen: Seen) -> Texts:
        """Loss then gradient for one sample: samples proceed independently, so the phases overlap."""
        return await self.mode.gradient.gradients(self, seen, await self.mode.loss.critiques(self, seen))

    async def rewrite(self, seen: Sequence[Seen], grads: Sequence[Texts]) -> tuple[Texts, dict[str, str]]:
        return await self.mode.optimizer.rewrite(self, seen, grads)

    async def diagnose(self, grads: Sequence[Texts], proposals: Mapping[str, str | None]) -> dict[str, dict[str, float | None]]:
        """Gradient specificity and feedback adherence (method.md), rated 1-10 by the diagnostics model."""
        async def one(c: str) -> tuple[str, dict[str, float | None]]:
            feedback = "\n\n".join(clip(note) for _, note in self.mode.gradient.notes_on(grads, c))
            if not feedback:
                return c, {"specificity": None, "adherence": None}
            spec_reply = self.ask("diagnostics", fill(template(self.spec, "specificity"), criterion=c, feedback=feedback,
                                                      definition=self.instructions[c]), 60)
            new = proposals.get(c)
            if new:
                adh_reply = self.ask("diagnostics", fill(template(self.spec, "adherence"), old=self.instructions[c],
                                                         feedback=feedback, new=new), 60)
                specificity, adherence = await together(spec_reply, adh_reply)
            else:
                specificity, adherence = await spec_reply, None
            return c, {"specificity": rating(specificity), "adherence": rating(adherence)}

        return dict(await together(*[one(c) for c in self.criteria]))


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
