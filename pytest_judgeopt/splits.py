"""The splits that keep train, gate and test apart.

Splits are made by group (the source document) so that no document is seen in two splits:
the released code of the paper this tool follows split by sample and leaked 79 documents
from train into test. The fractions are then balanced on records, documents staying whole, so that
one long document does not decide how many records a split holds.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .data import Record
from .problems import problem
from .spec import Spec

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Splits:
    train: tuple[Record, ...]
    val: tuple[Record, ...]
    test: tuple[Record, ...]

    def ids(self) -> dict[str, list[str]]:
        return {name: [r.id for r in getattr(self, name)] for name in SPLIT_NAMES}


def repeated_sources(spec: Spec, records: Iterable[Record], *, refusing: str = "") -> str | None:
    """Without ``dataset.group`` each record is its own group. When an input repeats across records (the same
    source text under several summaries), records of one source would fall into several splits: the test
    split would not be held out from train, and its interval would take samples of one source as independent.
    A spec that says ``split.by: record`` has chosen that on purpose. ``refusing`` names what will not run."""
    if spec.dataset.group is not None or spec.split.by == "record":
        return None
    records = tuple(records)
    for name, field in spec.dataset.inputs.items():
        first: dict[str, str] = {}
        sharing: dict[str, int] = {}
        for record in records:
            text = record.inputs.get(name)
            if text is None:
                continue
            if text in first:
                sharing[text] = sharing.get(text, 1) + 1
            else:
                first[text] = record.id
        if sharing:
            example = max(sharing, key=lambda text: sharing[text])
            return problem(spec.path, spec.line_of("dataset"), "dataset.group",
                           f"{refusing}no group is set, so each record is its own group, but input '{name}' repeats: "
                           f"{sum(sharing.values())} of {len(records)} records share {len(sharing)} texts (record "
                           f"'{first[example]}' and {sharing[example] - 1} more have the same one), so records of one "
                           "source would fall into several splits and the test split would not be held out",
                           f"set `dataset.group` to the field naming the source (its own field `{field}` will do), "
                           "or `split.by: record` to split records on purpose")
    return None


def split_dataset(records: Iterable[Record], fractions: Any) -> Splits:
    """Assign whole groups to train, val and test, seeded, so the three are disjoint by construction.

    ``fractions.by == "record"`` splits records one by one even when ``dataset.group`` is set (the groups
    still serve as documents for the statistics); otherwise each group is a unit. The fractions count
    units, then the record counts are balanced (``balanced``): one 200-record document among 19 of 5 made
    the test split hold 20-86% of the records, depending on the seed, where its fraction said 60%.
    """
    records = tuple(records)
    by_record = getattr(fractions, "by", None) == "record"
    sizes: dict[str, int] = {}
    for record in records:
        unit = record.id if by_record else record.group
        sizes[unit] = sizes.get(unit, 0) + 1
    units = sorted(sizes)
    random.Random(fractions.seed).shuffle(units)
    n = len(units)
    n_train = round(fractions.train * n)
    n_val = round(fractions.val * n)
    overflow = n_train + n_val - (n - 1 if fractions.test > 0 else n)
    if overflow > 0:  # rounding must never leave the test split without a group
        cut = min(overflow, n_train)
        n_train, n_val = n_train - cut, max(0, n_val - (overflow - cut))
    where = {g: "train" for g in units[:n_train]}
    where.update({g: "val" for g in units[n_train:n_train + n_val]})
    where.update({g: "test" for g in units[n_train + n_val:]})
    where = balanced(where, sizes, units)
    parts: dict[str, list[Record]] = {"train": [], "val": [], "test": []}
    for record in records:
        parts[where[record.id if by_record else record.group]].append(record)
    return Splits(tuple(parts["train"]), tuple(parts["val"]), tuple(parts["test"]))


def balanced(where: dict[str, str], sizes: Mapping[str, int], order: list[str]) -> dict[str, str]:
    """Move and swap whole groups between splits while that strictly lowers the record imbalance.

    A split's target is its share of the groups (as the rounding of the fractions gave it) applied to the
    records, T = n_k / n * N; the imbalance is the sum over splits of (records - T)^2 / T, relative so
    that a small split is not emptied to even out a large one. With groups of one size every split starts
    on its target and nothing moves: the assignment is the group-counting one. Each step takes the best
    move (one group, or several of one size, to another split) or swap (one group each way), so that
    a thousand small groups leaving an overfull split take a few steps, not a thousand. Shifting d
    records from split a to b changes the imbalance by d * (d * (1/T_a + 1/T_b) - 2 * (e_a/T_a -
    e_b/T_b)) (e: records over the target), a parabola in d: the best d is found by bisecting each
    split's distinct group sizes, not by trying pairs of groups, which keeps 10,000s of groups fast.
    A split keeps at least one group
    if the rounding gave it one (the test split is never emptied), and one it left empty stays empty (a
    zero fraction). When no step helps, no single move or swap could lower the imbalance; the steps are
    capped (4 n + 100). The arithmetic is in integers, so ties and the result are exact.
    """
    n, total = len(order), sum(sizes.values())
    rank = {unit: i for i, unit in enumerate(order)}
    members: dict[str, dict[int, list[str]]] = {name: {} for name in SPLIT_NAMES}
    for unit in order:
        members[where[unit]].setdefault(sizes[unit], []).append(unit)
    count = {name: sum(len(v) for v in members[name].values()) for name in SPLIT_NAMES}
    active = [name for name in SPLIT_NAMES if count[name]]
    # scaled by n: excess[k] = n * records - n_k * N = n * e_k; weight[k] = P / n_k for P the product of
    # the n_k, so that weight[k] * excess[k] is e_k / T_k times the same constant for every split
    excess = {k: n * sum(s * len(v) for s, v in members[k].items()) - count[k] * total for k in active}
    product = math.prod(count[k] for k in active)
    weight = {k: product // count[k] for k in active}

    def near(options: list[int], want: float) -> list[int]:
        at = bisect.bisect_left(options, want)
        return options[max(0, at - 1):at + 1]

    for _ in range(4 * n + 100):
        # (gain, from, to, size out, size back (0 for a move), how many groups go out)
        best: tuple[int, str, str, int, int, int] | None = None
        for a in active:
            for b in active:
                pull = excess[a] * weight[a] - excess[b] * weight[b]
                if a == b or pull <= 0:
                    continue
                # shifting d records from a to b lowers the imbalance by d * (2 * pull - d * cost), in units
                # common to every pair: it helps when 0 < d * cost < 2 * pull, most at d = pull / cost
                cost = n * (weight[a] + weight[b])
                out_sizes, back_sizes = sorted(members[a]), sorted(members[b])
                shifts = [(x - y, x, y, 1) for x in out_sizes for y in near(back_sizes, x - pull / cost) if y < x]
                for x in out_sizes if count[a] > 1 else ():  # a move: k groups of one size at once
                    most = min(len(members[a][x]), count[a] - 1)
                    shifts += [(k * x, x, 0, k) for k in {max(1, min(most, int(pull / cost / x) + up)) for up in (0, 1)}]
                for d, x, y, k in shifts:
                    gain = d * (2 * pull - d * cost)
                    if gain > 0 and (best is None or gain > best[0]):
                        best = (gain, a, b, x, y, k)
        if best is None:
            break
        _, a, b, x, y, k = best
        for source, target, size, many in ((a, b, x, k), (b, a, y, 1 if y else 0)):
            if not many:
                continue
            bucket = members[source][size]
            going = bucket[-many:]  # the last in the seeded order
            del bucket[-many:]
            if not bucket:
                del members[source][size]
            place = members[target].setdefault(size, [])
            place.extend(going)
            place.sort(key=rank.__getitem__)
            for unit in going:
                where[unit] = target
            count[source] -= many
            count[target] += many
            excess[source] -= size * n * many
            excess[target] += size * n * many
    return where


def sample_groups(records: tuple[Record, ...], groups: int | None, seed: int = 0) -> tuple[Record, ...]:
    """Keep a seeded choice of `groups` groups, for quick runs that stay document-whole."""
    names = sorted({r.group for r in records})
    if groups is None or groups >= len(names):
        return records
    keep = set(random.Random(seed).sample(names, groups))
    return tuple(r for r in records if r.group in keep)
