"""The plugin's command-line options and their ini twins: parsing, the error that names the option and
its fix, and the one rule for which wins (the command line over the ini file).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

# The parsers raise ValueError saying what is wrong with the text; `named` and `setting` add which
# option (or ini key) it was and the fix, so every option error names its option.


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value}")
    return value


def optimize_mode(text: str) -> str:
    from .spec import OPTIMIZE_MODES, mode_problem

    mode = text.upper()
    problem = mode_problem(mode)
    if problem:
        raise ValueError(f"{problem}; use {', '.join(OPTIMIZE_MODES[:-1])} or {OPTIMIZE_MODES[-1]}")
    return mode


def budget(text: str) -> Any:
    from .optimize.budget import Budget

    parsed = Budget.parse(text)
    if (parsed.calls is not None and parsed.calls < 1) or (parsed.usd is not None and not parsed.usd > 0):
        raise ValueError("a budget allows at least one call and more than $0")
    return parsed


def duration(text: str) -> float:
    """Seconds, or a number with a unit: 90s, 30m, 12h, 7d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        value = float(number) * unit
    except ValueError:
        raise ValueError(f"expected seconds or a number with s, m, h or d, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"expected a positive duration, got {text!r}")
    return value


def cache_mode(text: str) -> str:
    from .cache import MODES

    if text not in MODES:
        raise ValueError(f"must be one of {', '.join(MODES)}, not {text!r}")
    return text


def named(flag: str, parse: Any) -> Any:
    """The option's parser for the command line: its complaint becomes a usage error naming the option."""

    def parse_option(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise pytest.UsageError(f"{flag} {text}: {exc}. Fix: {option_fix(flag)}") from None

    parse_option.__name__ = parse.__name__
    return parse_option


EXAMPLES = {"judge_cache": "replay", "judge_concurrency": "8", "judge_timeout": "60", "judge_retries": "4",
            "judge_sample": "4", "judge_mode": "SSS", "judge_steps": "4", "judge_budget": "calls=500,usd=2",
            "judge_cache_url": "redis://127.0.0.1:6379/0", "judge_cache_prefix": "team-a:", "judge_cache_ttl": "7d"}


def option_fix(flag: str) -> str:
    name, help_ = next((n, h) for f, n, _, _, h in OPTIONS if f == flag)
    return f"write e.g. {flag} {EXAMPLES.get(name, '...')} ({help_.rstrip('.')})"


# (option, ini name, parser, default, help)
OPTIONS: list[tuple[str, str, Callable[[str], Any], Any, str]] = [
    ("--judge-model", "judge_model", str, None,
     "litellm model for the judge, overriding the specs (also JUDGEOPT_MODEL). Default: the spec's, else "
     "the ini judge_model, else the embedded local/smollm2."),
    ("--judge-cache", "judge_cache", cache_mode, "use",
     "answer cache: use (default), off, refresh (ask again, store), replay (cache only; a miss fails the item)."),
    ("--judge-cache-dir", "judge_cache_dir", str, ".judgeopt",
     "folder of the answer cache, relative to the rootdir (default .judgeopt)."),
    ("--judge-cache-url", "judge_cache_url", str, None,
     "a Redis that shares answers between checkouts and CI runners: redis://host:port/db, rediss:// for TLS "
     "(also JUDGEOPT_CACHE_URL); needs the `redis` extra."),
    ("--judge-cache-prefix", "judge_cache_prefix", str, "judgeopt:",
     "prefix of every key in the shared cache (default judgeopt:)."),
    ("--judge-cache-ttl", "judge_cache_ttl", duration, None,
     "expire shared-cache entries after this long: seconds, or 90m, 12h, 7d (default: never)."),
    ("--judge-concurrency", "judge_concurrency", positive_int, 8, "model calls in flight at once (default 8)."),
    ("--judge-timeout", "judge_timeout", duration, 60.0, "seconds (or 90s, 2m) before one model call times out (default 60)."),
    ("--judge-retries", "judge_retries", positive_int, 4, "retries of a failed model call (default 4)."),
    ("--judge-sample", "judge_sample", positive_int, None,
     "judge only N groups (documents) of each split, chosen by the split seed: quick, document-whole runs."),
    ("--judge-report", "judge_report", str, None, "write results.json to this folder."),
    ("--judge-baseline", "judge_baseline", str, None,
     "compare each spec with an earlier run: a folder its --judge-report wrote (results.json, predictions.jsonl); "
     "adds a ::baseline item per spec found there."),
    ("--judge-compare-model", "judge_compare_model", str, None,
     "compare each spec's judge with the same judge on this litellm model (test split): adds a ::compare item."),
    ("--judge-mode", "judge_mode", optimize_mode, None,
     "decomposition mode for --judge-optimize: ST, SSS, SSC, SCC, CCC (default: the spec's optimize.mode, else SSS)."),
    ("--judge-steps", "judge_steps", positive_int, None, "optimization steps (default: the spec's optimize.steps)."),
    ("--judge-budget", "judge_budget", budget, None,
     "cap an optimization: calls=N and/or usd=X (e.g. calls=500,usd=2); it stops cleanly, keeping the best so far."),
]


# (flag, ini name, help): on/off options
FLAGS = [
    ("--judge-record", "judge_record",
     "write each spec's answers to <spec stem>.answers.jsonl beside it (sorted, reviewable, to commit); answers "
     "the run no longer used are dropped."),
    ("--judge-cache-required", "judge_cache_required",
     "fail the items when the shared cache (--judge-cache-url) cannot be used, instead of going on with the local cache."),
]


def add_options(parser: pytest.Parser) -> None:
    """The options and their ini twins (called by the plugin's pytest_addoption)."""
    group = parser.getgroup("judgeopt", "LLM judge tests (pytest-judgeopt)")
    for flag, name, kind, default, help_ in OPTIONS:
        group.addoption(flag, dest=name, metavar=name.removeprefix("judge_").upper(), type=named(flag, kind), default=None,
                        help=help_)
        parser.addini(name, help=f"{help_} (ini twin of {flag})", default=None if default is None else str(default))
    group.addoption("--judge-optimize", dest="judge_optimize", nargs="?", const="run", default=None,
                    choices=("run", "study"), metavar="study",
                    help="improve each spec's instructions and write <spec>.lock.yaml for review; "
                         "--judge-optimize=study compares the five modes instead (writes nothing).")
    for flag, name, help_ in FLAGS:
        group.addoption(flag, dest=name, action="store_true", default=None, help=help_)
        parser.addini(name, type="bool", default=False, help=f"{help_} (ini twin of {flag})")
    parser.addini("judge_spec_glob", type="args", default=["*.judge.yaml"],
                  help="file name patterns of judge spec files (default *.judge.yaml).")


def setting(config: pytest.Config, name: str) -> Any:
    """The command line wins over the ini file; ini values pass through the option's own parser."""
    value = config.getoption(name)
    if value is not None:
        return value
    text = config.getini(name)
    if text in (None, ""):
        return None
    flag, kind = next((f, kind) for f, n, kind, _, _ in OPTIONS if n == name)
    try:
        return kind(text)
    except ValueError as exc:
        raise pytest.UsageError(f"ini option {name} = {text}: {exc}. Fix: {option_fix(flag)}") from None


def flag(config: pytest.Config, name: str) -> bool:
    value = config.getoption(name)
    return bool(value) if value is not None else bool(config.getini(name))


def cache_url(config: pytest.Config) -> str | None:
    """The command line, then JUDGEOPT_CACHE_URL (a CI job's secret), then the ini file."""
    return config.getoption("judge_cache_url") or os.environ.get("JUDGEOPT_CACHE_URL") or config.getini("judge_cache_url") or None
