"""Hooks for plugins and conftest files: extra dataset formats, agreement metrics and the probes' transforms.

The built-in formats and metrics are ordinary implementations of these hooks
(``pytest_judgeopt.defaults``), registered the same way a third-party plugin would be.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("pytest")


@hookspec(firstresult=True)
def pytest_judgeopt_load_records(path: Path, format: str, dataset: Any) -> Iterable[tuple[int, dict[str, Any]]] | None:
    """Read the records of a dataset file, or return None to leave the file to other loaders.

    ``format`` is ``dataset.format`` from the spec, or the file's extension without the dot.
    ``dataset`` is the spec's dataset settings (``pytest_judgeopt.spec.DatasetSpec``: ``delimiter``,
    ``paths``, ...); a hook may leave it out of its parameters. With several data files the hook is
    called once per file.
    Yield ``(line_number, record)`` pairs: the line number is quoted in error messages.
    Example, in a ``conftest.py``::

        import json

        def pytest_judgeopt_load_records(path, format):
            if format != "json":
                return None
            rows = json.loads(path.read_text())
            return ((i + 1, row) for i, row in enumerate(rows))
    """


@hookspec
def pytest_judgeopt_metrics() -> dict[str, Callable[[Any, Any], float | None] | None] | None:
    """Contribute agreement metrics that ``correlation.method`` can name.

    Each function takes two equal-length numpy arrays (judge scores, human scores) and
    returns a float, or None (or NaN) when undefined; its interval is a document jackknife like the
    built-ins' (on its own scale: Fisher's z is for correlations).
    (A None in place of a function marks a metric stats.py computes itself, as the built-ins'
    implementation does; an implementation returning None contributes nothing.)
    Example::

        import numpy as np

        def pytest_judgeopt_metrics():
            def neg_mae(judge, human):
                return -float(np.mean(np.abs(judge - human)))
            return {"neg_mae": neg_mae}
    """


@hookspec
def pytest_judgeopt_transforms() -> dict[str, Callable[[dict[str, str]], dict[str, str] | None]] | None:
    """Contribute input transforms that a ``transform`` probe can name (``probes: [{kind: transform, ...}]``).

    Each function takes one record's inputs (a new dict, placeholder -> text) and returns the changed
    inputs (all of them, or only those it changes), or None to leave the record out (a summary of one
    sentence cannot be shuffled). Records it leaves unchanged are left out too, and counted. Seed any
    randomness from the text, so a run judges the same changed prompts again and the cache answers them.
    (An implementation returning None contributes nothing.) Example, in a ``conftest.py``::

        import random

        def pytest_judgeopt_transforms():
            def shuffle_sentences(inputs):
                sentences = [s for s in inputs["summary"].split(". ") if s]
                if len(sentences) < 2:
                    return None
                random.Random(inputs["summary"]).shuffle(sentences)
                return {"summary": ". ".join(sentences)}
            return {"shuffle_sentences": shuffle_sentences}

    and in the spec::

        probes:
          - {kind: transform, transform: shuffle_sentences, expect: {coherence: lower}}
    """
