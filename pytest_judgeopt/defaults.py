"""The built-in dataset formats and metrics, registered as ordinary hook implementations."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pluggy

hookimpl = pluggy.HookimplMarker("pytest")


@hookimpl(trylast=True)
def pytest_judgeopt_load_records(path: Path, format: str, dataset: Any) -> Iterable[tuple[int, dict[str, Any]]] | None:
    # imported here, not at the top: pytest_configure registers this module in every run, and the
    # data module brings the spec module and YAML, which a project without spec files never needs
    from .data import read_builtin

    return read_builtin(path, format, dataset)


@hookimpl
def pytest_judgeopt_metrics() -> dict[str, Callable[[Any, Any], float | None] | None]:
    # None marks a metric that stats.py computes natively (faster than a hook's Python function)
    from .spec import BUILTIN_METRICS

    return dict.fromkeys(BUILTIN_METRICS)
