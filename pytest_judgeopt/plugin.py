"""The pytest layer: options, collection of ``*.judge.yaml`` files, items, fixture, summary.

Kept thin and light: loading this module imports neither litellm nor scipy nor rich, so
pytest starts as fast as before for every project that has the plugin installed. The work
happens in the core modules, imported when a spec file is actually collected.
"""

from __future__ import annotations

import fnmatch
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .judge import CriterionResult
    from .session import Session

CACHE_MODES = ("use", "off", "refresh", "replay")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise pytest.UsageError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise pytest.UsageError(f"expected a number of at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise pytest.UsageError(f"expected a number of seconds, got {text!r}") from None
    if value <= 0:
        raise pytest.UsageError(f"expected a positive number of seconds, got {value}")
    return value


def cache_mode(text: str) -> str:
    if text not in CACHE_MODES:
        raise pytest.UsageError(f"--judge-cache must be one of {', '.join(CACHE_MODES)}, not {text!r}")
    return text


# (option, ini name, parser, default, help)
OPTIONS = [
    ("--judge-model", "judge_model", str, None,
     "litellm model for the judge, overriding the specs (also JUDGEOPT_MODEL). Default: the spec's, else "
     "the ini judge_model, else the embedded local/smollm2."),
    ("--judge-cache", "judge_cache", cache_mode, "use",
     "answer cache: use (default), off, refresh (ask again, store), replay (cache only; a miss fails the item)."),
    ("--judge-cache-dir", "judge_cache_dir", str, ".judgeopt",
     "folder of the answer cache, relative to the rootdir (default .judgeopt)."),
    ("--judge-concurrency", "judge_concurrency", positive_int, 8, "model calls in flight at once (default 8)."),
    ("--judge-timeout", "judge_timeout", positive_float, 60.0, "seconds before one model call times out (default 60)."),
    ("--judge-retries", "judge_retries", positive_int, 4, "retries of a failed model call (default 4)."),
    ("--judge-sample", "judge_sample", positive_int, None,
     "judge only N groups (documents) of each split, chosen by the split seed: quick, document-whole runs."),
    ("--judge-report", "judge_report", str, None, "write results.json to this folder."),
]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("judgeopt", "LLM judge tests (pytest-judgeopt)")
    for flag, name, kind, default, help_ in OPTIONS:
        group.addoption(flag, dest=name, metavar=name.removeprefix("judge_").upper(), type=kind, default=None, help=help_)
        parser.addini(name, help=f"{help_} (ini twin of {flag})", default=None if default is None else str(default))
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
    kind = next(kind for _, n, kind, _, _ in OPTIONS if n == name)
    return kind(text)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hooks

    pluginmanager.add_hookspecs(hooks)


class JudgeRun:
    """Per-run state, kept in ``config.stash``; the session and its client are made on first use."""

    def __init__(self, config: pytest.Config):
        self.config = config
        self._session: Session | None = None

    @property
    def session(self) -> Session:
        if self._session is None:
            from .cache import Cache
            from .llm import LLM
            from .session import Session

            config = self.config
            cache_dir = config.rootpath / setting(config, "judge_cache_dir")
            llm = LLM(cache=Cache(cache_dir), cache_mode=setting(config, "judge_cache"),
                      concurrency=setting(config, "judge_concurrency"), timeout=setting(config, "judge_timeout"),
                      retries=setting(config, "judge_retries"))
            metrics: dict[str, Any] = {}
            for contributed in config.hook.pytest_judgeopt_metrics():
                metrics.update(contributed)
            self._session = Session(llm, model_override=config.getoption("judge_model"),
                                    default_model=config.getini("judge_model") or None, sample=setting(config, "judge_sample"),
                                    loader=lambda path, fmt: config.hook.pytest_judgeopt_load_records(path=path, format=fmt),
                                    metrics=metrics)
            self._session.base = config.rootpath
        return self._session

    @property
    def started(self) -> bool:
        return self._session is not None


run_key = pytest.StashKey[JudgeRun]()


def pytest_configure(config: pytest.Config) -> None:
    from . import defaults

    if not config.pluginmanager.has_plugin("judgeopt-defaults"):
        config.pluginmanager.register(defaults, "judgeopt-defaults")
    config.stash[run_key] = JudgeRun(config)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    patterns = parent.config.getini("judge_spec_glob")
    if any(fnmatch.fnmatch(file_path.name, pattern) for pattern in patterns):
        return JudgeFile.from_parent(parent, path=file_path)
    return None


class JudgeFile(pytest.File):
    def collect(self) -> Any:
        from .spec import SpecError

        try:
            loaded = self.config.stash[run_key].session.load(self.path)
        except SpecError as exc:
            raise self.CollectError(str(exc)) from None
        for name, criterion in loaded.spec.criteria.items():
            yield CriterionItem.from_parent(self, name=name, criterion=name, line=criterion.line)


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
        result = self.config.stash[run_key].session.evaluate(self.path, self.criterion)
        for key, value in junit_properties(result).items():
            self.user_properties.append((key, value))
        if not result.passed:
            raise JudgeFailed(result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        from .llm import CallError
        from .spec import SpecError

        if isinstance(excinfo.value, JudgeFailed):
            from .judge import describe_failure

            return describe_failure(excinfo.value.result)
        if isinstance(excinfo.value, (SpecError, CallError)):
            return str(excinfo.value)
        from .local_model import LocalModelUnavailable

        if isinstance(excinfo.value, LocalModelUnavailable):
            return f"cannot run the embedded judge model: {excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, self.line - 1, f"judge {self.path.name}::{self.criterion}"


def junit_properties(result: CriterionResult) -> dict[str, Any]:
    a = result.agreement
    return {"judge_metric": a.method, "judge_level": a.level, "judge_rho": a.value, "judge_ci_low": a.low,
            "judge_ci_high": a.high, "judge_n": result.n, "judge_min_rho": result.criterion.min_rho,
            "judge_parse_failures": result.failed_count, "judge_shape": result.shape}


@pytest.fixture(scope="session")
def judge(pytestconfig: pytest.Config) -> Session:
    """The judging session: ``judge.evaluate("judges/x.judge.yaml", "coherence", instruction=...)``.

    Paths are relative to the rootdir; answers come from and go to the same cache as the items.
    """
    return pytestconfig.stash[run_key].session


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    run = config.stash.get(run_key, None)
    if run is None or not run.started or hasattr(config, "workerinput"):
        return
    evaluations = run.session.evaluations
    if not evaluations:
        return
    from .report import summary_lines

    terminalreporter.write_sep("=", "judge agreement")
    for line in summary_lines(evaluations, run.session.llm, verbose=config.get_verbosity() >= 0):
        terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session) -> None:
    run = session.config.stash.get(run_key, None)
    if run is None or not run.started:
        return
    report = setting(session.config, "judge_report")
    if report and not hasattr(session.config, "workerinput"):
        folder = Path(report)
        folder.mkdir(parents=True, exist_ok=True)
        results = {"version": 1, "evaluations": run.session.evaluations, "usage": {
            role: usage.to_json() for role, usage in sorted(run.session.llm.usage.items())}}
        tmp = folder / "results.json.tmp"
        tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, folder / "results.json")


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(run_key, None)
    if run is not None and run.started:
        run.session.close()
