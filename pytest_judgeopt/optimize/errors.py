"""Why an optimization stops without a result: another process runs it, or replay lacks an answer."""

from __future__ import annotations

from ..spec import Spec


class OptimizationBusy(Exception):
    pass


class ReplayIncomplete(Exception):
    """In replay mode, an answer the optimization needs is not in the cache. The run stops before any
    checkpoint or lock is written from it: a finished checkpoint would be taken as done by a later run."""

    def __init__(self, spec: Spec, what: str):
        from ..answers import answers_path

        super().__init__(f"{spec.path.name}: the optimization needs answers that are not in the cache (cache mode is "
                         f"replay): {what}. Fix: record them with pytest --judge-optimize --judge-record (needs the "
                         f"model) and commit {answers_path(spec.path).name}")
