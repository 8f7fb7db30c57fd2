"""The pytest layer's hooks: collection of ``*.judge.yaml`` files, the fixture, ordering, xdist, summary.

The options are in ``options.py``, the run's state in ``run_state.py``, the items in ``items.py``.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .items import (
    JUDGE_ITEMS,
    CaseItem,
    ComparisonItem,
    CriterionItem,
    MergedItem,
    OptimizeItem,
    ProbeItem,
    StudyItem,
)
from .options import OPTIONS, add_options, cache_url, flag, setting
from .run_state import JudgeRun, gathered, measured, run_key

if TYPE_CHECKING:
    from .session import Session


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    from . import hooks

    pluginmanager.add_hookspecs(hooks)


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


@pytest.fixture(scope="session")
def judge(pytestconfig: pytest.Config) -> Session:
    """The judging session: ``judge.evaluate("judges/x.judge.yaml", "coherence", instruction=...)``,
    ``judge.score("judges/x.judge.yaml", "coherence", source=..., summary=...)`` and ``judge.score_many``.

    Paths are relative to the rootdir; answers come from and go to the same cache as the items.
    """
    return pytestconfig.stash[run_key].session


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
