"""The state of one pytest run, kept in ``config.stash``: the judging session (made on first use, so a
project without spec files never imports the core), its client and cache, the live status, what xdist
workers sent, and the measurements as plain data for the summary and the report.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .options import cache_url, flag, setting

if TYPE_CHECKING:
    from .session import Session


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
