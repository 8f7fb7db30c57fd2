"""Files the user keeps (lock files, checkpoints, reports): written whole, with the mode the umask gives."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_judgeopt.files import write_atomic

ROOT = Path(__file__).resolve().parents[1]
# a fresh process sets its umask, writes a lock file, a checkpoint-like file and a report through the package,
# and prints their modes; it checks on the way that nothing changed the umask behind its back
WRITER = """\
import os, sys
from pathlib import Path
os.umask(int(sys.argv[2], 8))
from pytest_judgeopt.files import write_atomic
from pytest_judgeopt.report import write_report

calls = []
real = os.umask
os.umask = lambda mask: calls.append(mask) or real(mask)
folder = Path(sys.argv[1])
write_atomic(folder / "toy.judge.lock.yaml", "criteria: {}\\n")
write_atomic(folder / "runs" / "checkpoint.json", "{}")
found = {"evaluations": [], "interference": [], "cases": [], "probes": [], "comparisons": [], "usage": {},
         "notes": [], "optimizations": [], "studies": []}
write_report(folder / "report", found, root=folder)
print("umask calls", calls)
for path in sorted(folder.rglob("*")):
    if path.is_file():
        print(path.relative_to(folder).as_posix(), oct(path.stat().st_mode & 0o777))
"""


@pytest.mark.skipif(os.name != "posix", reason="file modes and the umask are POSIX's")
@pytest.mark.parametrize(("umask", "mode"), [("022", "0o644"), ("002", "0o664"), ("077", "0o600")])
def test_every_file_gets_the_umasks_mode_and_the_umask_is_never_changed(tmp_path: Path, umask: str, mode: str) -> None:
    """mkstemp made lock files and checkpoints 0600 (a lock file is meant to be committed and shared), and the
    report fixed its own by setting the process's umask twice to read it, which races with other threads."""
    done = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path), umask], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "umask calls []"
    modes = dict(line.split() for line in lines[1:])
    assert set(modes) == {"toy.judge.lock.yaml", "runs/checkpoint.json", "report/results.json",
                          "report/predictions.jsonl", "report/index.html"}
    assert set(modes.values()) == {mode}


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "toy.judge.lock.yaml"
    write_atomic(target, "old\n")

    with pytest.raises(TypeError):
        write_atomic(target, 5)  # type: ignore[arg-type]
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["toy.judge.lock.yaml"]
    assert stat.S_ISREG(target.stat().st_mode)
