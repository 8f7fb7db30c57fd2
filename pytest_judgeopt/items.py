"""The pytest items of a spec's cases and probes, and the failure text of what the user can act on.

Part of the pytest layer with ``plugin.py``: an item asks the judging session of its spec file
(``JudgeFile.judging``) and turns the result into JUnit properties and a verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


class ItemFailed(Exception):
    """A case or probe that does not hold; the message says what was expected and what the judge did."""


def known_failure(error: BaseException) -> str | None:
    """The message of a failure the user can act on without a traceback (a spec, a call, the embedded model,
    a shared cache that is required)."""
    from .llm import CallError
    from .local_model import LocalModelUnavailable
    from .probes import ProbeError
    from .redis_cache import SharedCacheError
    from .spec import SpecError

    if isinstance(error, (SpecError, CallError, ProbeError, SharedCacheError)):
        return str(error)
    if isinstance(error, LocalModelUnavailable):
        return f"cannot run the embedded judge model: {error}"
    return None


class SpecPartItem(pytest.Item):
    """An item that judges one named part of a spec (a case, a probe) through the spec file's session."""

    def __init__(self, *, line: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.line = line

    @property
    def judging(self) -> Any:
        return self.parent.judging  # type: ignore[union-attr]

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, ItemFailed):
            return str(excinfo.value)
        return known_failure(excinfo.value) or super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.line - 1, f"judge {self.path.name}::{self.name}"


class CaseItem(SpecPartItem):
    """One case of a spec: the judge must score its inputs within the expectation, per criterion."""

    def __init__(self, *, case: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.case = case

    def runtest(self) -> None:
        from .cases import describe_failure

        # the spec's cases selected in this run (after -k and node ids) are judged together, in one pass
        together = [i.case for i in self.session.items if isinstance(i, CaseItem) and i.path == self.path]
        result = self.judging.case(self.path, self.case, together=together)
        self.user_properties.extend(result.properties().items())
        if not result.passed:
            raise ItemFailed(describe_failure(result))


class ProbeItem(SpecPartItem):
    """One behavioural probe of a spec: a paired statistic on the test split, and its gate."""

    def __init__(self, *, probe: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.probe = probe

    def runtest(self) -> None:
        from .probes import describe_failure

        result = self.judging.probe(self.path, self.probe)
        self.user_properties.extend(result.properties().items())
        if not result.passed:
            raise ItemFailed(describe_failure(result))
