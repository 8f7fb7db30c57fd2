"""Lock files: optimized instructions written beside the spec, for a person to review and commit.

Like a snapshot update, ``--judge-optimize`` never edits the spec: it writes
``<spec stem>.lock.yaml``, and ordinary runs test the locked instructions while the spec and
data they were made from are unchanged. A checksum over the content tells a file edited by
hand from one we wrote, so a hand edit is never overwritten silently.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from .files import write_atomic
from .spec import Spec

VERSION = 1
HEADER = """\
# pytest-judgeopt lock file: judge instructions found by `pytest --judge-optimize`.
# Review the diff, then commit this file. Ordinary runs use these instructions while the
# spec_hash and data_hash below match the spec and its data, and the judge is judge_model (a run
# that names another with --judge-model or JUDGEOPT_MODEL tests these instructions on it). Thresholds
# (min_rho, ...) are not part of the hash: tightening a gate keeps the lock in force.
"""


class LockError(Exception):
    """A lock file we cannot use; the message says which file and what to do.

    ``outdated``: a lock of an older format, which we wrote and may write again; any other lock we cannot
    read was made or broken by hand, since we write only valid ones, and is never replaced.
    """

    def __init__(self, message: str, outdated: bool = False):
        super().__init__(message)
        self.outdated = outdated


@dataclass(frozen=True)
class Lock:
    path: Path
    instructions: dict[str, str]
    spec_hash: str
    data_hash: str
    edited: bool
    content: dict[str, Any]
    judge_model: str | None = None  # the judge it was optimized with (Model.describe()); None in a lock that predates it


def lock_path(spec_path: Path) -> Path:
    return spec_path.with_name(spec_path.name.removesuffix(".yaml").removesuffix(".yml") + ".lock.yaml")


def spec_hash(spec: Spec) -> str:
    """What the instructions were optimized for: criteria, prompts, data mapping, split. Not thresholds."""
    relevant = {
        "criteria": {c.name: {"instruction": c.instruction, "scale": list(c.scale)} for c in spec.criteria.values()},
        "judge": {k: v for k, v in vars(spec.judge).items() if k != "max_parse_failure_rate"},
        "dataset": {"id": spec.dataset.id, "group": spec.dataset.group, "inputs": spec.dataset.inputs,
                    "scores": spec.dataset.scores},
        "split": vars(spec.split),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()


def checksum(content: dict[str, Any]) -> str:
    body = {k: v for k, v in content.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def read_lock(spec_path: Path) -> Lock | None:
    path = lock_path(spec_path)
    if not path.is_file():
        return None
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise LockError(f"{path}: not readable YAML ({exc}). Fix: repair it, or delete it and run pytest --judge-optimize") from None
    if not isinstance(content, dict) or not isinstance(content.get("criteria"), dict):
        raise LockError(f"{path}: not a lock file (no `criteria` mapping). Fix: delete it and run pytest --judge-optimize")
    version = content.get("version")
    if version != VERSION:
        raise LockError(f"{path}: lock format version {version!r}, this pytest-judgeopt reads version {VERSION}. "
                        "Fix: run pytest --judge-optimize to write it again (or delete it)", outdated=True)
    instructions = {}
    for name, entry in content["criteria"].items():
        text = entry.get("instruction") if isinstance(entry, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise LockError(f"{path}: criteria.{name}.instruction is missing or empty. Fix: restore it, or delete the lock file")
        instructions[str(name)] = text.strip()
    models: dict[str, Any] = content["models"] if isinstance(content.get("models"), dict) else {}
    judge = content.get("judge_model", models.get("judge"))
    return Lock(path, instructions, str(content.get("spec_hash", "")), str(content.get("data_hash", "")),
                content.get("checksum") != checksum(content), content, str(judge) if judge else None)


def lock_content(spec: Spec, result: Mapping[str, Any], data_digest: str) -> dict[str, Any]:
    """``result`` is an optimization's JSON form (``OptimizationResult.to_json``), ``spec`` the spec it ran
    with (its gate rule resolved for the mode run)."""
    criteria = {}
    for name, outcome in result["criteria"].items():
        criteria[name] = {
            "instruction": outcome["final"],
            "initial_instruction": outcome["initial"],
            "accepted_steps": outcome["accepted_steps"],
            "val": {"before": outcome["val_before"], "after": outcome["val_after"], **result["val"]},
            "test": {"before": outcome["test_before"], "after": outcome["test_after"], "difference": outcome["test_diff"]},
            "diagnostics": {"specificity": outcome["specificity"], "adherence": outcome["adherence"]},
        }
    content = {
        "version": VERSION,
        "spec": spec.path.name,
        "made": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "spec_hash": spec_hash(spec),
        "data_hash": data_digest,
        "judge_model": result["models"].get("judge"),  # ordinary runs compare it with theirs (README: lock files)
        "mode": result["mode"],
        "seed": result["seed"],
        "models": result["models"],
        "steps_run": result["steps_run"],
        "stopped": result["stopped"],
        "gate": vars(spec.optimize.gate),
        # the prompt shape of the val numbers (the loop's) and of the test numbers (the items'): they differ
        # when a joint mode optimized a merged prompt that the items test as separate prompts
        "shapes": result["shapes"],
        "split_sizes": result["split_sizes"],
        "criteria": criteria,
    }
    content["checksum"] = checksum(content)
    return content


def write_lock(spec: Spec, result: Mapping[str, Any], data_digest: str) -> tuple[Path, str | None]:
    """Write the lock of an optimization (its JSON form) atomically; returns the path written and a note
    when a hand-edited lock was kept."""
    target = lock_path(spec.path)
    note = kept = None
    try:
        existing = read_lock(spec.path)
    except LockError as exc:
        existing = None
        if not exc.outdated:
            kept = f"{target} cannot be read as a lock file (was it edited by hand?), so it was left as it is"
    if existing is not None and existing.edited:
        kept = f"{target} was edited by hand since pytest-judgeopt wrote it, so it was left as it is"
    if kept is not None:
        new = target.with_name(target.name.removesuffix(".yaml") + ".new.yaml")
        note = (f"{kept}; the new result is in {new}. Compare them and keep one (rename {new.name} to {target.name} "
                "to take the new one)")
        target = new
    text = HEADER + yaml.safe_dump(lock_content(spec, result, data_digest), sort_keys=False, allow_unicode=True, width=100)
    write_atomic(target, text)
    return target, note
