"""The interfaces the optimizer is written against (as pytest-xdist's schedulers are against theirs).

A mode is four stage strategies; the step loop calls each stage through these protocols and never
asks which variant it holds. A stage calls the models through a ``StepContext`` (one step's
instructions, the role call, reply checks). A whole run talks to the session that drives it through
``JudgingSession``: the members listed here, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, TypeVar

from ..cases import Case
from ..data import Dataset, Record
from ..judge import CriterionResult
from ..llm import LLM
from ..spec import Model, Spec
from .roles import Seen

Texts = dict[str, str | None]  # per criterion, or under "*" for one text about all of them


class Calls(Protocol):
    """How many calls a stage makes in one step: a product of K (criteria), B (batch) and V (val samples)."""

    @property
    def formula(self) -> str: ...

    def count(self, sizes: Mapping[str, int]) -> int: ...


class StepContext(Protocol):
    """What a stage may use of the step it runs in."""

    spec: Spec
    criteria: list[str]
    instructions: dict[str, str]

    @property
    def mode(self) -> Stages: ...

    async def ask(self, role: str, messages: list[dict[str, str]], max_tokens: int) -> str | None: ...

    def tokens(self, share: float) -> int: ...

    def instruction_list(self) -> str: ...

    def batch_text(self, seen: Sequence[Seen], criterion: str | None) -> str: ...

    def checked(self, criterion: str, text: str | None, reasons: dict[str, str]) -> str | None: ...

    def with_cases(self, messages: list[dict[str, str]], criterion: str | None) -> list[dict[str, str]]: ...


class JudgeShape(Protocol):
    """How the judge is asked while optimizing: each criterion alone, or all in one joint call."""

    shape: str  # "separate" or "merged", as judge_records and the test evaluation take it
    label: str  # the README table's words for it

    @property
    def calls(self) -> Calls:
        """Judging the train batch."""

    @property
    def gate_calls(self) -> Calls:
        """Judging the val split with the candidate instructions."""

    @property
    def combination_calls(self) -> Calls | None:
        """Judging val again when the gate keeps only some rewrites and they share one prompt (None: never)."""

    def gate_criteria(self, proposed: Sequence[str]) -> list[str] | None:
        """The criteria the gate judges again (None: all of them, in one call per sample)."""

    def own_reply(self, seen: Seen, criterion: str) -> str:
        """What an S stage may quote of the judge's reply: nothing about another criterion."""


class Stage(Protocol):
    per_criterion: bool  # S: one call per criterion, carrying only that criterion; C: one call for all

    @property
    def calls(self) -> Calls: ...


class LossStage(Stage, Protocol):
    async def critiques(self, step: StepContext, seen: Seen) -> Texts:
        """The loss model's critique of how the judge scored one sample."""

    def critique_of(self, critiques: Texts, criterion: str) -> str | None:
        """The critique a per-criterion gradient call is given."""

    def joint_critique(self, critiques: Texts, criteria: Sequence[str]) -> str:
        """The critiques as one combined gradient call quotes them."""


class GradientStage(Stage, Protocol):
    async def gradients(self, step: StepContext, seen: Seen, critiques: Texts) -> Texts:
        """The gradient model's feedback on the instructions, from one sample's critiques."""

    def notes_on(self, grads: Sequence[Texts], criterion: str) -> list[tuple[int, str]]:
        """The feedback bearing on one criterion, with the number of the text it is about."""

    def all_notes(self, grads: Sequence[Texts], criteria: Sequence[str]) -> list[str]:
        """Every note, labelled, as one combined optimizer call quotes them."""


class OptimizerStage(Stage, Protocol):
    async def rewrite(self, step: StepContext, seen: Sequence[Seen],
                      grads: Sequence[Texts]) -> tuple[Texts, dict[str, str]]:
        """New instructions (None where there is none to try), and why each missing one is missing."""


class Stages(Protocol):
    """A decomposition mode as the step loop sees it."""

    @property
    def name(self) -> str: ...

    @property
    def judge(self) -> JudgeShape: ...

    @property
    def loss(self) -> LossStage: ...

    @property
    def gradient(self) -> GradientStage: ...

    @property
    def optimizer(self) -> OptimizerStage: ...


class SpecAndData(Protocol):
    """A loaded spec, as the session hands it back (``session.Loaded``)."""

    @property
    def spec(self) -> Spec: ...

    @property
    def cases(self) -> Sequence[Case]: ...

    @property
    def dataset(self) -> Dataset: ...


L = TypeVar("L", bound=SpecAndData)


class JudgingSession(Protocol[L]):
    """The members of ``session.Session`` a whole optimization run and the mode study use."""

    llm: LLM
    sample: int | None
    state_dir: Path
    progress: Callable[[str], None] | None
    notes: list[str]

    def load(self, path: str | Path) -> L: ...

    def model_for(self, spec: Spec, role: str = "judge") -> Model: ...

    def records(self, loaded: L, split: str) -> Sequence[Record]: ...

    def evaluate_instructions(self, loaded: L, instructions: dict[str, str], names: Sequence[str], *, split: str,
                              shape: str, sources: dict[str, str], record: bool = False) -> dict[str, CriterionResult]: ...
