"""The pytest layer: options, collection of ``*.judge.yaml`` files, items, fixture, summary.

Kept thin and light: loading this module imports neither litellm nor scipy nor rich, so
pytest starts as fast as before for every project that has the plugin installed. The work
happens in the core modules, imported when a spec file is actually collected.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .items import CaseItem, ProbeItem, known_failure

if TYPE_CHECKING:
    from collections.abc import Callable

    from .compare import Comparison
    from .interference import InterferenceResult
    from .judge import CriterionResult
    from .session import Session


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


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"expected a positive number of seconds, got {value:g}")
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
    ("--judge-timeout", "judge_timeout", positive_float, 60.0, "seconds before one model call times out (default 60)."),
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


def pytest_addoption(parser: pytest.Parser) -> None:
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


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hooks

    pluginmanager.add_hookspecs(hooks)


class JudgeRun:
    """Per-run state, kept in ``config.stash``; the session and its client are made on first use."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self._session: Session | None = None
        self.studies: list[Any] = []
        self.workers: dict[str, dict[str, Any]] = {}  # under xdist, on the controller: what each worker measured
        self.started_at = time.monotonic()
        self.live: Any = None  # the live progress status (progress.Progress), on a terminal only
        self.current_item: pytest.Item | None = None  # while an item runs: messages put its line back after them
        self.report_files: list[Path] = []
        # --judge-record: per spec file, its items and those selected in this run (to tell whether every one ran)
        self.spec_items: dict[Path, int] = {}
        self.partial_specs: set[str] = set()
        self.recorded: list[Any] = []  # answers.Outcome per answer file written, or an error line
        self.baseline: Any = None  # baseline.BaselineRun of --judge-baseline, read when the run is configured
        self.hook_proxies: dict[Path, Any] = {}  # spec file -> the hooks of its directory (its node's ihook)

    @property
    def session(self) -> Session:
        if self._session is None:
            from .cache import Cache
            from .llm import LLM
            from .session import Session

            config = self.config
            cache_dir = config.rootpath / setting(config, "judge_cache_dir")
            shared = None
            url = cache_url(config)
            if url:
                from .redis_cache import RedisCache

                shared = RedisCache(url, prefix=setting(config, "judge_cache_prefix"), ttl=setting(config, "judge_cache_ttl"),
                                    required=flag(config, "judge_cache_required"))
            llm = LLM(cache=Cache(cache_dir), shared=shared, cache_mode=setting(config, "judge_cache"),
                      concurrency=setting(config, "judge_concurrency"), timeout=setting(config, "judge_timeout"),
                      retries=setting(config, "judge_retries"))
            if shared is not None:
                shared.report = llm.notes.append  # the shared cache's troubles, once each, in the session's notes
            if flag(config, "judge_record"):
                from .answers import Recorder

                llm.recorder = Recorder()
            reporter = config.pluginmanager.get_plugin("terminalreporter")
            progress = None if reporter is None or hasattr(config, "workerinput") else self.message
            if self.live is not None:
                self.live.expected = llm.expected
                llm.listeners.append(self.live)
            self._session = Session(llm, progress=progress, model_override=config.getoption("judge_model"),
                                    default_model=config.getini("judge_model") or None, sample=setting(config, "judge_sample"),
                                    hooks=self.spec_hooks, state_dir=cache_dir, transforms=lambda: transforms(config))
            self._session.base = config.rootpath
        return self._session

    def spec_hooks(self, spec_path: Path) -> tuple[Any, dict[str, Any]]:
        """The loader and metrics for one spec, asked when it is loaded: from the hooks of its directory (its file
        node's ``ihook``: plugins and the conftest files above it, not a sibling folder's), so a conftest collected
        after the first spec counts too. A spec pytest did not collect (the judge fixture given another path) gets
        the hooks of every conftest loaded so far."""
        hook = self.hook_proxies.get(spec_path, self.config.hook)
        metrics: dict[str, Any] = {}
        for contributed in hook.pytest_judgeopt_metrics():
            metrics.update(contributed)

        def loader(path: Path, format: str, dataset: Any) -> Any:
            return hook.pytest_judgeopt_load_records(path=path, format=format, dataset=dataset)

        return loader, metrics

    @property
    def started(self) -> bool:
        return self._session is not None

    def message(self, text: str) -> None:
        """A line for the terminal while an item runs (what is judged, an optimization's plan and steps).

        Items run with pytest capturing their output, which would swallow the line (and leave pytest's
        writer believing it had written it), so capturing is suspended for it, as pytest's live logging does.
        """
        config = self.config
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None or config.get_verbosity() < 0:
            return
        capman = config.pluginmanager.get_plugin("capturemanager")

        def write(line: str) -> None:
            with capman.global_and_fixture_disabled() if capman is not None else nullcontext():
                reporter.ensure_newline()
                reporter.write(line)
                item = self.current_item
                if item is not None:  # put the running item's file name (or -v's test id) back, for its result
                    reporter.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
                if reporter.currentfspath is None:
                    reporter.write("\n")
                reporter.flush()

        if self.live is not None:
            self.live.message(write, text)
        else:
            write(text)


run_key = pytest.StashKey[JudgeRun]()


def transforms(config: pytest.Config) -> dict[str, Any]:
    """The probes' transforms the hooks give, asked when a spec loads (so a conftest.py beside it counts);
    a name two hooks give is the first one's, in pluggy's call order (the most recently registered first)."""
    found: dict[str, Any] = {}
    for contributed in config.hook.pytest_judgeopt_transforms():
        for name, function in (contributed or {}).items():
            found.setdefault(name, function)
    return found


def pytest_configure(config: pytest.Config) -> None:
    from . import defaults

    if not config.pluginmanager.has_plugin("judgeopt-defaults"):
        config.pluginmanager.register(defaults, "judgeopt-defaults")
    url = cache_url(config)
    if url:
        from .redis_cache import url_problem

        problem = url_problem(url)
        if problem:
            raise pytest.UsageError(f"--judge-cache-url: {problem}")
    for _, name, _, _, _ in OPTIONS:  # a bad ini value is a usage error now, not a traceback mid-collection
        setting(config, name)
    run = config.stash[run_key] = JudgeRun(config)
    folder = setting(config, "judge_baseline")
    if folder:
        from .baseline import BaselineError, read_baseline

        try:
            run.baseline = read_baseline(Path(folder))
        except BaselineError as exc:
            raise pytest.UsageError(f"--judge-baseline: {exc}") from None


def pytest_sessionstart(session: pytest.Session) -> None:
    """After pytest_configure, so the terminal reporter exists; before collection makes the judging session."""
    run = session.config.stash.get(run_key, None)
    if run is not None and run.live is None:
        run.live = live_progress(session.config)


def live_progress(config: pytest.Config) -> Any:
    """The live status, when pytest writes to a terminal from this process: not when piped or captured (a CI
    log, pytester), not on a pytest-xdist worker (its output is not a terminal; the controller shows xdist's
    own progress), not on a dumb terminal. The terminal's descriptor is duplicated now, before items run
    under pytest's capture, so the status reaches the terminal and never a test's captured output."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or hasattr(config, "workerinput") or not reporter.isatty or os.environ.get("TERM") == "dumb":
        return None
    writer = getattr(reporter, "_tw", None)
    stream: Any = getattr(writer, "_file", sys.stdout)  # the writer's private stream: any file-like object
    try:
        fd = os.dup(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    from .progress import Progress, TerminalStatus

    fallback = getattr(writer, "fullwidth", 80)

    def width() -> int:
        """Asked of our own descriptor: while an item runs, pytest's capture has replaced standard output."""
        try:
            return os.get_terminal_size(fd).columns or fallback
        except OSError:
            return fallback

    status = TerminalStatus(fd, column=lambda: getattr(writer, "width_of_current_line", 0), width=width,
                            dim=bool(reporter.hasmarkup))
    return Progress(status.show, status.hide, {}, width=lambda: status.room() - 1, close=status.close)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    """The status is drawn only while an item runs: pytest writes nothing then, and writes its result after."""
    run = item.config.stash.get(run_key, None)
    if run is None:
        return (yield)
    run.current_item = item
    if run.live is not None:
        run.live.begin()
    try:
        return (yield)
    finally:
        run.current_item = None
        if run.live is not None:
            run.live.end()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A spec's optimize (or study) item runs before its other items, whatever reordered them (pytest-randomly,
    which runs first): it writes the lock they test. Its ::merged runs after its criterion items, whose
    judgments it reuses. Each spec's items keep the places they have; only their order among them changes,
    so other tests, and other specs' items, stay where the reordering put them."""
    rank = {OptimizeItem: 0, StudyItem: 0, MergedItem: 2}
    places: dict[Path, list[int]] = {}
    for index, item in enumerate(items):
        if isinstance(item, JUDGE_ITEMS):
            places.setdefault(item.path, []).append(index)
    for indices in places.values():
        ordered = sorted((items[i] for i in indices), key=lambda item: rank.get(type(item), 1))  # stable
        for index, item in zip(indices, ordered, strict=True):
            items[index] = item


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    patterns = parent.config.getini("judge_spec_glob")
    if any(fnmatch.fnmatch(file_path.name, pattern) for pattern in patterns):
        return JudgeFile.from_parent(parent, path=file_path)
    return None


class JudgeFile(pytest.File):
    def collect(self) -> Any:
        from .spec import SpecError

        run = self.config.stash[run_key]
        run.hook_proxies[self.path.resolve()] = self.ihook
        try:
            self.judging = run.session  # the case and probe items judge through it
            loaded = self.judging.load(self.path)
        except SpecError as exc:
            raise self.CollectError(str(exc)) from None
        run.spec_items[loaded.spec.path] = 0
        for item in self._items(loaded):
            run.spec_items[loaded.spec.path] += 1
            yield item

    def _items(self, loaded: Any) -> Any:
        for name, criterion in loaded.spec.criteria.items():
            if name == next(iter(loaded.spec.criteria)):
                optimize = self.config.getoption("judge_optimize")
                if optimize == "run":
                    yield OptimizeItem.from_parent(self, name="optimize", line=loaded.spec.line_of("optimize") or 1)
                elif optimize == "study":
                    yield StudyItem.from_parent(self, name="study", line=loaded.spec.line_of("optimize") or 1)
            yield CriterionItem.from_parent(self, name=name, criterion=name, line=criterion.line)
        if loaded.spec.interference is not None:  # after the criteria, so their separate judgments are reused
            yield MergedItem.from_parent(self, name="merged", line=loaded.spec.line_of("interference") or 1)
        baseline = self.config.stash[run_key].baseline
        if baseline is not None:
            from .text import relative

            found = baseline.find(relative(str(self.path), self.config.rootpath), loaded.spec.name)
            if found is not None:
                yield ComparisonItem.from_parent(self, name="baseline", line=loaded.spec.line_of("baseline") or 1,
                                                 baseline=found)
        if setting(self.config, "judge_compare_model"):
            yield ComparisonItem.from_parent(self, name="compare", line=1, baseline=None)
        for case in loaded.cases:
            yield CaseItem.from_parent(self, name=case.item_name, case=case.name, line=case.line)
        for probe in loaded.probes:
            yield ProbeItem.from_parent(self, name=probe.item_name, probe=probe.name, line=probe.line)


class JudgeFailed(Exception):
    """The judge missed a threshold; carries what was measured."""

    def __init__(self, result: CriterionResult):
        super().__init__(result.criterion.name)
        self.result = result


class CriterionItem(pytest.Item):
    """One criterion of one spec: passes when the judge agrees with the humans well enough."""

    def __init__(self, *, criterion: str, line: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.criterion = criterion
        self.line = line

    def runtest(self) -> None:
        result = self.config.stash[run_key].session.evaluate(self.path, self.criterion, together=self.together())
        for key, value in junit_properties(result).items():
            self.user_properties.append((key, value))
        if not result.passed:
            raise JudgeFailed(result)

    def together(self) -> list[str]:
        """The criteria this run judges of the spec, in one pass (after -k and node ids): those of its selected
        criterion items, or all of them when an item that needs every criterion's judgments is selected too
        (::merged, ::baseline, ::compare), so those judgments are the items' own."""
        mine = [i for i in self.session.items if i.path == self.path]
        if any(isinstance(i, (MergedItem, ComparisonItem)) for i in mine):
            return []  # every criterion
        return [i.criterion for i in mine if isinstance(i, CriterionItem)]

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, JudgeFailed):
            from .text import criterion_failure

            return criterion_failure(excinfo.value.result)
        return known_failure(excinfo.value) or super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.line - 1, f"judge {self.path.name}::{self.criterion}"


class InterferenceFailed(Exception):
    """Merging the instructions into one prompt costs some criterion agreement; carries the comparison."""

    def __init__(self, result: InterferenceResult):
        super().__init__(", ".join(c.criterion for c in result.failed))
        self.result = result


class MergedItem(pytest.Item):
    """The no-interference check of a spec: the merged prompt must not cost any criterion agreement."""

    def __init__(self, *, line: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.line = line

    def runtest(self) -> None:
        result = self.config.stash[run_key].session.interference(self.path)
        for key, value in interference_properties(result).items():
            self.user_properties.append((key, value))
        if not result.passed:
            raise InterferenceFailed(result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, InterferenceFailed):
            from .text import interference_failure

            return interference_failure(excinfo.value.result.to_json())
        return known_failure(excinfo.value) or super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.line - 1, f"judge {self.path.name}::merged"


class ComparisonFailed(Exception):
    """Judge b is worse than judge a on some criterion, or the two cannot be compared; carries the comparison."""

    def __init__(self, comparison: Comparison):
        super().__init__(comparison.kind)
        self.comparison = comparison


class ComparisonItem(pytest.Item):
    """``::baseline`` (this run against an earlier run's report) or ``::compare`` (the configured model against
    --judge-compare-model): fails when a criterion drops beyond ``baseline.max_drop`` and the interval excludes zero."""

    def __init__(self, *, line: int, baseline: Any, **kwargs: Any):
        super().__init__(**kwargs)
        self.line = line
        self.baseline = baseline

    def runtest(self) -> None:
        run = self.config.stash[run_key]
        if self.name == "baseline":
            comparison = run.session.against_baseline(self.path, self.baseline, source=str(run.baseline.folder))
        else:
            comparison = run.session.compare(self.path, model=setting(self.config, "judge_compare_model"))
        for key, value in comparison_properties(comparison).items():
            self.user_properties.append((key, value))
        if not comparison.passed:
            raise ComparisonFailed(comparison)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, ComparisonFailed):
            from .text import comparison_failure

            return comparison_failure(excinfo.value.comparison.to_json())
        return known_failure(excinfo.value) or super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.line - 1, f"judge {self.path.name}::{self.name}"


def interference_properties(result: InterferenceResult) -> dict[str, Any]:
    """The merged item's JUnit properties: per criterion rho separate and merged, their difference with its
    interval, the paired n, the merged prompt's failed judgments and the verdict; the threshold; the calls."""
    out: dict[str, Any] = {"interference_max_drop": result.settings.max_drop}
    for name, c in result.criteria.items():
        out.update({f"interference_{name}_separate": c.separate, f"interference_{name}_merged": c.merged,
                    f"interference_{name}_diff": c.diff, f"interference_{name}_low": c.low,
                    f"interference_{name}_high": c.high, f"interference_{name}_n": c.n,
                    f"interference_{name}_parse_failures": sum(c.failures_merged.values()),
                    f"interference_{name}_verdict": c.verdict})
    for shape, usage in (("separate", result.usage_separate), ("merged", result.usage_merged)):
        out.update({f"interference_calls_{shape}": usage.answered, f"interference_prompt_tokens_{shape}": usage.prompt_tokens})
    return out


def comparison_properties(comparison: Comparison) -> dict[str, Any]:
    """A ::baseline or ::compare item's JUnit properties (prefix: its kind): per criterion rho of a and b, their
    difference with its interval, the paired n, the verdict; the threshold; what each side cost."""
    data = comparison.to_json()
    kind = data["kind"]
    out: dict[str, Any] = {f"{kind}_max_drop": data["max_drop"], f"{kind}_a": data["a"]["label"],
                           f"{kind}_b": data["b"]["label"], f"{kind}_model_a": data["a"]["model"],
                           f"{kind}_model_b": data["b"]["model"], f"{kind}_differs": "; ".join(data["differs"]),
                           f"{kind}_unpaired_a": len(data["unpaired"].get("a", [])),
                           f"{kind}_unpaired_b": len(data["unpaired"].get("b", []))}
    for c in data["criteria"]:
        name = c["criterion"]
        out.update({f"{kind}_{name}_{key}": c[key] for key in ("a", "b", "diff", "low", "high", "n", "verdict")})
    for side in ("a", "b"):
        usage = data["usage"][side]
        if usage is not None:
            out.update({f"{kind}_calls_{side}": usage["calls"], f"{kind}_prompt_tokens_{side}": usage["prompt_tokens"],
                        f"{kind}_completion_tokens_{side}": usage["completion_tokens"],
                        f"{kind}_cost_usd_{side}": usage["cost_usd"]})
    return out


def optimize_properties(result: Any) -> dict[str, Any]:
    """The optimize item's JUnit properties: per criterion val and test rho before and after (with the
    test intervals and their paired difference) and the accepted steps; then the run's steps and cost."""
    out: dict[str, Any] = {"optimize_mode": result.mode.name, "optimize_steps_run": result.steps_run}
    for name, o in result.outcomes.items():
        b, a, d = o.test_before, o.test_after, o.test_diff
        out.update({f"optimize_{name}_val_before": o.val_before, f"optimize_{name}_val_after": o.val_after,
                    f"optimize_{name}_test_before": b.value, f"optimize_{name}_test_before_low": b.low,
                    f"optimize_{name}_test_before_high": b.high, f"optimize_{name}_test_after": a.value,
                    f"optimize_{name}_test_after_low": a.low, f"optimize_{name}_test_after_high": a.high,
                    f"optimize_{name}_test_n": a.n, f"optimize_{name}_test_diff": d.diff,
                    f"optimize_{name}_test_diff_low": d.low, f"optimize_{name}_test_diff_high": d.high,
                    f"optimize_{name}_accepted_steps": ",".join(map(str, o.accepted_steps))})
    costs = [u["cost_usd"] for u in result.usage.values()]
    out.update({"optimize_calls": sum(u["requests"] for u in result.usage.values()),
                "optimize_calls_made": sum(u["calls"] for u in result.usage.values()),
                "optimize_prompt_tokens": sum(u["prompt_tokens"] for u in result.usage.values()),
                "optimize_completion_tokens": sum(u["completion_tokens"] for u in result.usage.values()),
                "optimize_cost_usd": None if any(c is None for c in costs) else round(sum(costs), 6),
                "optimize_wall_seconds": round(result.wall_seconds or 0.0, 3)})
    return out


def junit_properties(result: CriterionResult) -> dict[str, Any]:
    a = result.agreement
    return {"judge_metric": a.method, "judge_level": a.level, "judge_rho": a.value, "judge_ci_low": a.low,
            "judge_ci_high": a.high, "judge_n": result.n, "judge_pairs": a.n, "judge_documents": result.documents,
            "judge_min_rho": result.criterion.min_rho,
            "judge_parse_failures": result.failed_count, "judge_shape": result.shape}


@pytest.fixture(scope="session")
def judge(pytestconfig: pytest.Config) -> Session:
    """The judging session: ``judge.evaluate("judges/x.judge.yaml", "coherence", instruction=...)``,
    ``judge.score("judges/x.judge.yaml", "coherence", source=..., summary=...)`` and ``judge.score_many``.

    Paths are relative to the rootdir; answers come from and go to the same cache as the items.
    """
    return pytestconfig.stash[run_key].session


class OptimizeItem(pytest.Item):
    """``--judge-optimize``: improve the instructions, write the lock file; the criterion items then test it."""

    def __init__(self, *, line: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.line = line

    def runtest(self) -> None:
        config = self.config
        session = config.stash[run_key].session
        started = time.monotonic()
        result = session.optimize(self.path, setting(config, "judge_mode"), steps=setting(config, "judge_steps"),
                                  budget=setting(config, "judge_budget"), write=True)
        result.wall_seconds = time.monotonic() - started
        for key, value in optimize_properties(result).items():
            self.user_properties.append((key, value))
        problems = diagnostics_problems(result)
        if result.lock_refused:
            problems.insert(0, f"{result.spec.name}: {result.lock_refused}")
        if problems:
            raise OptimizationFailed("\n".join(problems))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        from .optimize.errors import OptimizationBusy, ReplayIncomplete
        from .spec import SpecError

        if isinstance(excinfo.value, (OptimizationFailed, OptimizationBusy, ReplayIncomplete, SpecError, ValueError)):
            return str(excinfo.value)
        return known_failure(excinfo.value) or super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.line - 1, f"judge {self.path.name}::{self.name}"


class StudyItem(OptimizeItem):
    """``--judge-optimize=study``: every mode, several seeds, one table; writes no lock file."""

    def runtest(self) -> None:
        from .optimize.study import run_study

        config = self.config
        session = config.stash[run_key].session
        config.stash[run_key].studies.append(run_study(session, self.path, steps=setting(config, "judge_steps"),
                                                       budget=setting(config, "judge_budget")))


JUDGE_ITEMS = (CriterionItem, MergedItem, ComparisonItem, CaseItem, OptimizeItem, StudyItem)


class OptimizationFailed(Exception):
    pass


def diagnostics_problems(result: Any) -> list[str]:
    """The spec's optional floors on gradient specificity and feedback adherence."""
    settings = result.spec.optimize
    problems = []
    for name, outcome in result.outcomes.items():
        for label, value, floor in (("gradient specificity", outcome.specificity, settings.min_specificity),
                                    ("feedback adherence", outcome.adherence, settings.min_adherence)):
            if floor is not None and (value is None or value < floor):
                shown = "unmeasured" if value is None else f"{value:.1f}"
                problems.append(f"{result.spec.name}::{name}: {label} {shown} is below the spec's minimum {floor:g}")
    return problems


def measured(run: JudgeRun) -> dict[str, Any]:
    """What this process measured, as plain data: under pytest-xdist each worker sends it to the
    controller (``workeroutput``), which prints the summary and writes the report for all of them.
    It is the JSON form throughout (per-sample predictions included), so the controller's summary,
    results.json and index.html are made from exactly what a serial run would make them from."""
    if not run.started:
        return {}
    from .report import optimization_json

    session = run.session
    return {"evaluations": session.evaluations, "interference": session.interferences, "cases": session.case_results,
            "probes": session.probe_results,
            "comparisons": session.comparisons,
            "usage": {role: usage.state() for role, usage in session.llm.usage.items()}, "notes": session.notes,
            "optimizations": [optimization_json(result, result.wall_seconds)
                              for result in session.optimizations],
            "studies": [study.to_json() for study in run.studies],
            "answers": session.llm.recorder.state() if session.llm.recorder is not None else {},
            "partial_specs": sorted(run.partial_specs)}


def gathered(run: JudgeRun) -> dict[str, Any]:
    """This process's measurements and those its xdist workers sent, merged: what two workers both
    measured is reported once, and everything is sorted, so the order workers finish in changes nothing."""
    from .report import merge

    return merge([measured(run)] + [run.workers[name] for name in sorted(run.workers)])


def pytest_collection_finish(session: pytest.Session) -> None:
    """After deselection: tell the judging session which specs' ``::merged`` checks will run (their separate
    passes then make the merged calls too, each sample's calls together; see Session.merged_ahead), and note
    which specs this run covers only in part (``-k``, ``spec.yaml::coherence``): recording them must not drop
    the answers of their items that did not run."""
    run = session.config.stash.get(run_key, None)
    if run is None:
        return
    merged = {Path(item.path).resolve() for item in session.items if isinstance(item, MergedItem)}
    if merged:
        run.session.merged_ahead.update(merged)
    selected: dict[Path, int] = {}
    for item in session.items:
        if isinstance(item.parent, JudgeFile):
            selected[item.path.resolve()] = selected.get(item.path.resolve(), 0) + 1
    run.partial_specs = {str(path) for path, total in run.spec_items.items() if 0 < selected.get(path, 0) < total}


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist's default ``--dist load``, left as it is unless judge items are collected; then a spec's
    items stay together on one worker, in order, as in a serial run: the optimize item writes the lock its
    criterion items then test, and ``::merged`` reuses the criteria's judgments (on another worker it would ask
    the model again). Every other test stays its own unit. Other ``--dist`` modes are left alone.

    The controller does not collect, so the choice is made when the workers' collections arrive, before
    anything is scheduled: a project with the plugin installed and no spec file is scheduled by xdist's own
    LoadScheduling."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScheduling, LoadScopeScheduling

    patterns = config.getini("judge_spec_glob")

    def spec_file(nodeid: str) -> str | None:
        file = nodeid.split("::", 1)[0]
        return file if any(fnmatch.fnmatch(file.rsplit("/", 1)[-1], p) for p in patterns) else None

    class SpecScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return spec_file(nodeid) or nodeid

    class JudgeScheduling:
        """xdist's LoadScheduling until the collection is complete; SpecScheduling from then on if it holds
        a judge item. Until the first schedule() xdist only adds and removes workers and their collections,
        which are kept here and handed to the scheduler chosen."""

        def __init__(self) -> None:
            self.active: Any = LoadScheduling(config, log)
            self.collections: dict[Any, Any] = {}
            self.decided = False

        def add_node(self, node: Any) -> None:
            self.active.add_node(node)

        def add_node_collection(self, node: Any, collection: Any) -> None:
            self.collections[node] = collection
            self.active.add_node_collection(node, collection)

        def remove_node(self, node: Any) -> Any:
            self.collections.pop(node, None)
            return self.active.remove_node(node)

        def schedule(self) -> None:
            if not self.decided:
                self.decided = True
                if any(spec_file(nodeid) for ids in self.collections.values() for nodeid in ids):
                    chosen = SpecScheduling(config, log)
                    for node in self.active.nodes:
                        chosen.add_node(node)
                        if node in self.collections:
                            chosen.add_node_collection(node, self.collections[node])
                    self.active = chosen
            self.active.schedule()

        def __getattr__(self, name: str) -> Any:  # the rest of xdist's Scheduling protocol, as the chosen one has it
            return getattr(self.active, name)

    return JudgeScheduling()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """pytest-xdist, on the controller: a worker finished; keep what it measured."""
    output = getattr(node, "workeroutput", None) or {}
    if "judgeopt" in output:
        name = str(output.get("workerid") or getattr(getattr(node, "gateway", None), "id", len(node.config.stash[run_key].workers)))
        node.config.stash[run_key].workers[name] = json.loads(output["judgeopt"])


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Per spec, per criterion, the numbers that say whether to trust the judge; rich tables, coloured
    only on a terminal without NO_COLOR; ``-q`` keeps one line per spec."""
    run = config.stash.get(run_key, None)
    if run is None or hasattr(config, "workerinput") or not (run.started or run.workers):
        return  # nothing judged or collected here: gathering would import the report and llm modules for nothing
    found = gathered(run)
    if not any(found[key] for key in ("evaluations", "interference", "comparisons", "cases", "probes", "optimizations",
                                      "studies", "notes")):
        answers_summary(terminalreporter, run, config.rootpath)
        return
    from .report import summary_sections
    from .text import render

    color = bool(terminalreporter.isatty) and bool(terminalreporter.hasmarkup) and not os.environ.get("NO_COLOR")
    width = getattr(getattr(terminalreporter, "_tw", None), "fullwidth", 80) if color else None
    for title, blocks in summary_sections(found, verbosity=config.get_verbosity(), root=config.invocation_params.dir):
        if blocks:
            terminalreporter.write_sep("=", title)
            for line in render(blocks, color=color, width=width):
                terminalreporter.write_line(line)
    if run.report_files:
        terminalreporter.write_sep("=", "judge report")
        terminalreporter.write_line(f"wrote {', '.join(str(path) for path in run.report_files)}")
    answers_summary(terminalreporter, run, config.rootpath)


def answers_summary(terminalreporter: Any, run: JudgeRun, root: Path) -> None:
    """--judge-record: per answer file, how many answers were added, kept and dropped."""
    if run.recorded:
        terminalreporter.write_sep("=", "judge answers")
        for outcome in run.recorded:
            terminalreporter.write_line(outcome if isinstance(outcome, str) else f"recorded {outcome.describe(root)}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    run = session.config.stash.get(run_key, None)
    if run is None:
        return
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: the controller reports for everyone
        if run.started:
            workeroutput["judgeopt"] = json.dumps(measured(run))
        return
    if flag(session.config, "judge_record") and (run.started or run.workers):
        stopped = exitstatus == pytest.ExitCode.INTERRUPTED or bool(session.shouldfail or session.shouldstop)
        run.recorded = record_answers(run, stopped)
    report = setting(session.config, "judge_report")
    if report and (run.started or run.workers):
        from .report import write_report

        run.report_files = write_report(Path(report), gathered(run), root=session.config.rootpath,
                                        run_seconds=time.monotonic() - run.started_at)


def record_answers(run: JudgeRun, stopped: bool) -> list[Any]:
    """Write the answer file of every spec this run worked on (with its xdist workers' answers)."""
    from .answers import Recorder
    from .spec import SpecError

    recorder = Recorder()
    partial: set[str] = set()
    for part in [measured(run)] + [run.workers[name] for name in sorted(run.workers)]:
        recorder.add_state(part.get("answers", {}))
        partial.update(part.get("partial_specs", []))
    out: list[Any] = []
    for spec_path in sorted(set(recorder.used) | set(recorder.failed)):
        why = ("the run stopped early" if stopped else
               "not every item of the spec was selected" if str(spec_path) in partial else "")
        try:
            out.append(recorder.write(spec_path, keep_unused=why))
        except (SpecError, OSError) as exc:
            out.append(f"could not record the answers of {spec_path.name}: {exc}")
    return out


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(run_key, None)
    if run is not None and run.started:
        run.session.close()
    if run is not None and run.live is not None:
        run.live.close()
