"""Parallel runs: ``pytest -n 2`` agrees with a serial run, and two optimizations of one spec do not collide.

Under pytest-xdist the items run in worker processes, which share the answer cache (SQLite in
WAL mode) and the optimizer's checkpoints, while the summary and ``--judge-report`` are made
by the controller, which runs no item: each worker sends what it measured with xdist's
``workeroutput`` and the controller merges it. A spec's items stay together on one worker, in
order, as in a serial run (the optimize item writes the lock its criterion items test). The
tests run real ``pytest -n 2`` subprocesses against the scripted server and compare verdicts,
locks, the summary and results.json with a serial run of the same project; and two processes
optimizing one spec at once, where the second must refuse with a message and lose nothing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import server_model, spec_text
from tests.fake_llm import FakeLLMServer
from tests.world import RECORDS as OPT_RECORDS
from tests.world import World, new_session, strict_improves, write_project

# two specs with different instructions, so no prompt of one is answered from the cache by the other's
SPECS = {"first.judge.yaml": "from 1 to 5.", "second.judge.yaml": "on a scale of 1 to 5."}
SUBPROCESS = ("-p", "no:benchmark", "-p", "no:cacheprovider", "-rA", "--judge-retries=1")


def write(folder: Path, server: FakeLLMServer) -> None:
    """Two specs whose judge agrees with the humans only once the optimizer has added "Be strict."."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in OPT_RECORDS))
    for name, wording in SPECS.items():
        text = spec_text(server_model(server), min_rho=0.9,
                         extra="correlation: {min_groups: 6}\noptimize: {steps: 1, batch_size: 2}\n")
        (folder / name).write_text(text.replace("from 1 to 5.", wording))


def verdicts(result: pytest.RunResult) -> dict[str, str]:
    """Item id -> PASSED/FAILED, from the short summary (-rA) that serial and xdist runs both print."""
    found = re.findall(r"^(PASSED|FAILED|ERROR) (\S+\.judge\.yaml::\w+)", result.stdout.str(), re.M)
    return {item: outcome for outcome, item in found}


def section(result: pytest.RunResult, title: str) -> list[str]:
    """The lines of one of the plugin's terminal summary sections."""
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if re.fullmatch(rf"=+ {title} =+", line))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("====")), len(lines))
    return lines[start + 1:end]


COUNTS = re.compile(r"model calls: |  calls: ")  # calls made vs. answered from the cache: see the usage below


def blocks(lines: list[str]) -> list[tuple[str, ...]]:
    """A section's per-spec blocks (a heading and its indented lines), sorted: workers finish in any order."""
    out: list[list[str]] = []
    for line in lines:
        if not line.startswith(" "):
            out.append([])
        out[-1].append(line)
    return sorted(tuple(b) for b in out)


def report(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    data["evaluations"] = sorted(data["evaluations"], key=lambda e: json.dumps(e, sort_keys=True))
    data["interference"] = sorted(data["interference"], key=lambda c: json.dumps(c, sort_keys=True))
    return data


def lock(path: Path) -> dict[str, Any]:
    """A lock file's content without the time it was made (and the checksum over that time)."""
    return {k: v for k, v in yaml.safe_load(path.read_text()).items() if k not in ("made", "checksum")}


def test_two_workers_give_the_verdicts_locks_summary_and_report_of_a_serial_run(pytester: pytest.Pytester,
                                                                                fake_llm: FakeLLMServer) -> None:
    """``--judge-optimize`` on two specs, serial and with ``-n 2``: each spec's optimize item, criterion items
    and ::merged item must run as in a serial run (the items test the lock the optimize item wrote), the
    workers share one cache and one checkpoint folder, and the controller reports what the workers measured."""
    fake_llm.responder = World(OPT_RECORDS, score=strict_improves)
    serial_dir, parallel_dir = pytester.path / "serial", pytester.path / "parallel"
    write(serial_dir, fake_llm)
    write(parallel_dir, fake_llm)
    serial = pytester.runpytest(*SUBPROCESS, "--judge-optimize", f"--judge-report={serial_dir}/report",
                                f"--judge-cache-dir={serial_dir}/.judgeopt", str(serial_dir))  # in-process: quicker
    serial_calls = len(fake_llm.chat_requests())
    fake_llm.reset()
    parallel = pytester.runpytest_subprocess(*SUBPROCESS, "-n", "2", "--judge-optimize",
                                             f"--judge-report={parallel_dir}/report",
                                             f"--judge-cache-dir={parallel_dir}/.judgeopt", str(parallel_dir), timeout=300)
    assert "2 workers [8 items]" in parallel.stdout.str()

    def strip(run: pytest.RunResult) -> dict[str, str]:
        return {item.split("/")[-1]: outcome for item, outcome in verdicts(run).items()}

    assert strip(serial) == strip(parallel), parallel.stdout.str()
    assert len(strip(serial)) == 8 and set(strip(serial).values()) == {"PASSED"}, serial.stdout.str()
    for name in SPECS:  # the same optimization, locked the same way
        locked = name.replace(".yaml", ".lock.yaml")
        assert lock(serial_dir / locked) == lock(parallel_dir / locked)
        assert all(c["instruction"].endswith("Be strict.") for c in lock(serial_dir / locked)["criteria"].values())
    assert len(list((parallel_dir / ".judgeopt" / "runs").glob("*.json"))) == 2

    for title in ("judge optimization", "judge agreement"):
        shown = [[line.replace(str(folder), "<project>").replace(f"{folder.name}/", "<project>/")
                  for line in section(result, title) if not COUNTS.match(line)]
                 for result, folder in ((serial, serial_dir), (parallel, parallel_dir))]
        assert blocks(shown[0]) == blocks(shown[1]), title
    one, two = report(serial_dir / "report" / "results.json"), report(parallel_dir / "report" / "results.json")
    for entry in one["evaluations"] + two["evaluations"] + one["interference"] + two["interference"]:
        entry.pop("path", None)  # the two projects live in different folders
    assert one["evaluations"] == two["evaluations"] and len(one["evaluations"]) == 2
    assert one["interference"] == two["interference"] and len(one["interference"]) == 2
    # The same questions were asked, per role, and none failed. Which of them reached the model and which
    # the cache answered can differ: the two specs share a few loss prompts (same sample, same scores), which
    # the serial run asks once and two workers may ask at the same moment.
    assert {r: (u["requests"], u["errors"]) for r, u in one["usage"].items()} == \
        {r: (u["requests"], u["errors"]) for r, u in two["usage"].items()}
    assert sum(u["calls"] for u in one["usage"].values()) == serial_calls
    assert sum(u["calls"] for u in two["usage"].values()) == len(fake_llm.chat_requests())
    for usage in two["usage"].values():
        assert usage["calls"] + usage["cache_hits"] == usage["requests"]


# ---------------------------------------------------------------------------------------------
# two optimizations of the same spec at once

OPTIMIZE = """\
import sys

from pytest_judgeopt.llm import LLM
from pytest_judgeopt.optimize.errors import OptimizationBusy
from pytest_judgeopt.session import Session

spec, state = sys.argv[1:3]
session = Session(LLM(retries=1, backoff=0.01, timeout=30.0), state_dir=state)
try:
    result = session.optimize(spec, "SSS", steps=2, write=True)
except OptimizationBusy as busy:
    print("BUSY", busy)
    sys.exit(3)
print("DONE", result.steps_run, sorted(result.instructions.items()))
"""


def test_a_second_optimization_of_the_same_spec_refuses_with_a_message_and_loses_nothing(
        tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    world = World(OPT_RECORDS, score=strict_improves)
    started, release = threading.Event(), threading.Event()

    def responder(body: dict[str, Any]) -> Any:
        """Hold the first run inside its work until the second has tried to start."""
        started.set()
        release.wait(60)
        return world(body)

    fake_llm.responder = responder
    spec = write_project(tmp_path, fake_llm, optimize="batch_size: 2")
    script = tmp_path / "optimize.py"
    script.write_text(OPTIMIZE)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, str(script), str(spec), str(tmp_path / ".judgeopt")]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert started.wait(60), "the first optimization never called the model"
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    finally:
        release.set()
    out_first, _ = first.communicate(timeout=120)
    assert second.returncode == 3, second.stdout + second.stderr
    assert second.stdout.startswith("BUSY another process is optimizing toy.judge.yaml in mode SSS with these settings; "
                                    "wait for it to finish (its checkpoint is shared, so nothing is lost)")
    assert "Traceback" not in second.stderr
    assert first.returncode == 0, out_first
    assert out_first.splitlines()[-1].startswith("DONE 2 ")
    # the run's guard file is gone with the run; its checkpoint stays, to be reused
    runs = tmp_path / ".judgeopt" / "runs"
    assert list(runs.glob("*.lock")) == [] and len(list(runs.glob("*.json"))) == 1

    # once the first is done, an optimization of the same spec reuses its finished run instead of repeating it
    fake_llm.responder = world
    fake_llm.reset()
    session = new_session(tmp_path / ".judgeopt")
    try:
        again = session.optimize(spec, "SSS", steps=2)
    finally:
        session.close()
    assert again.reused and again.steps_run == 2
    assert out_first.splitlines()[-1] == f"DONE 2 {sorted(again.instructions.items())}"
    assert all(b["messages"][0]["role"] == "system" for b in fake_llm.chat_requests())  # the test split's judge only


class Worker:
    """A stand-in for one xdist worker as the scheduler sees it: it records the test indices sent to it."""

    def __init__(self, name: str) -> None:
        self.gateway = type("Gateway", (), {"id": name})()
        self.sent: list[int] = []
        self.shutting_down = False

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent.extend(indices)

    def send_runtest_all(self) -> None:
        self.sent.append(-1)

    def shutdown(self) -> None:
        self.shutting_down = True


def scheduled(pytester: pytest.Pytester, collection: list[str]) -> tuple[str, list[list[str]]]:
    """The scheduler our hook makes for two workers, fed one collection by both: which xdist scheduler it
    ended up as, and the test ids each worker was sent first."""
    from xdist.workermanage import Producer

    from pytest_judgeopt.plugin import pytest_xdist_make_scheduler

    config = pytester.parseconfigure("--tx", "2*popen", "--dist", "load", "-p", "no:benchmark")
    scheduler = pytest_xdist_make_scheduler(config, Producer("test", enabled=False))
    workers = [Worker("gw0"), Worker("gw1")]
    for worker in workers:
        scheduler.add_node(worker)
    for worker in workers:
        scheduler.add_node_collection(worker, collection)
    assert scheduler.collection_is_completed
    scheduler.schedule()
    return type(scheduler.active).__name__, [[collection[i] for i in w.sent] for w in workers]


def test_without_judge_items_xdist_schedules_as_it_would_without_the_plugin(pytester: pytest.Pytester) -> None:
    """issue 12.20: the plugin replaced xdist's `load` scheduling in every project, spec files or not."""
    which, _ = scheduled(pytester, [f"test_plain.py::test_{i}" for i in range(8)])
    assert which == "LoadScheduling"


def test_with_judge_items_a_specs_items_go_to_one_worker_together(pytester: pytest.Pytester) -> None:
    collection = ["a.judge.yaml::optimize", "a.judge.yaml::coherence", "a.judge.yaml::merged",
                  "b.judge.yaml::coherence", "b.judge.yaml::fluency"] + [f"test_plain.py::test_{i}" for i in range(4)]
    which, sent = scheduled(pytester, collection)
    assert which == "SpecScheduling"
    for spec in ("a.judge.yaml", "b.judge.yaml"):
        holders = [ids for ids in sent if any(i.startswith(spec) for i in ids)]
        assert len(holders) == 1, sent  # one worker has all of the spec's items, in their order
        assert [i for i in holders[0] if i.startswith(spec)] == [i for i in collection if i.startswith(spec)]


def test_an_optimization_runs_where_fcntl_does_not_exist(tmp_path: Path, fake_llm: FakeLLMServer) -> None:
    """--judge-optimize imported fcntl, which Windows has not: in a process where its import fails, an
    optimization still runs (filelock guards it) and writes its lock file."""
    fake_llm.responder = World(OPT_RECORDS, score=strict_improves)
    spec = write_project(tmp_path, fake_llm, optimize="batch_size: 2")
    script = tmp_path / "optimize.py"
    script.write_text('import sys\nsys.modules["fcntl"] = None\n' + OPTIMIZE.replace("steps=2", "steps=1"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-W", "ignore::UserWarning", str(script), str(spec), str(tmp_path / ".judgeopt")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1].startswith("DONE 1 ")
    assert (tmp_path / "toy.judge.lock.yaml").is_file()
    assert list((tmp_path / ".judgeopt" / "runs").glob("*.lock")) == []
