"""YAML as a spec is read: safely, with the line of every key and value, refusing what YAML would
accept silently (a key written twice, aliases that expand without end), and remembering the keys an
unquoted comma made, so the messages built on it can point at the line and name the real mistake.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .problems import Path_, SpecError, dotted, problem

MAX_SPEC_NODES = 100_000  # values after expanding aliases: "billion laughs" nesting stays cheap to check
MERGE_TAG = "tag:yaml.org,2002:merge"


def read_yaml(path: Path, splits: dict[Path_, tuple[str, str]] | None = None) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML and remember the line of every key and value, so errors can point at them; ``splits``
    collects the keys an unquoted comma made (see comma_splits)."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        at_line = raw[:exc.start].count(b"\n") + 1
        raise SpecError([problem(path, at_line, "", f"not UTF-8 text (byte {exc.start})", "save the file as UTF-8")]) from None
    # libyaml when present: the pure-Python parser takes seconds on a spec near the size limit. Its
    # messages are worded differently, so a file it refuses is parsed again by the pure one for the message.
    fast = getattr(yaml, "CSafeLoader", None)
    for make_loader in ([fast] if fast else []) + [yaml.SafeLoader]:
        try:
            node, data = compose(path, text, make_loader)
            break
        except yaml.reader.ReaderError as exc:  # a control character: refused before parsing, without a mark
            if make_loader is not yaml.SafeLoader:
                continue
            line = text[:exc.position].count("\n") + 1 if isinstance(exc.position, int) else None
            shown = repr(chr(exc.character)) if isinstance(exc.character, int) else repr(exc.character)
            raise SpecError([problem(path, line, "", f"the character {shown} is not allowed in YAML ({exc.reason})",
                                     "remove it, or write it as an escape inside double quotes (\"\\x1f\")")]) from None
        except yaml.MarkedYAMLError as exc:
            if make_loader is not yaml.SafeLoader:
                continue
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else None
            raise SpecError([problem(path, line, "", f"invalid YAML: {exc.problem or exc.context}",
                                     "fix the YAML syntax at that line")]) from None
        except (yaml.YAMLError, RecursionError, ValueError, TypeError) as exc:
            raise SpecError([problem(path, None, "", f"invalid YAML: {exc}", "fix the YAML syntax")]) from None
    lines: dict[Path_, int] = {}
    if node is not None:
        record_lines(node, (), lines)
        if splits is not None:
            comma_splits(node, (), splits)
    return data, lines


def compose(path: Path, text: str, make_loader: Any) -> tuple[yaml.Node | None, Any]:
    """The document's node tree (checked) and its data, with one loader."""
    loader = make_loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            check_nodes(path, node)
        return node, loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()


def check_nodes(path: Path, root: yaml.Node) -> None:
    """Refuse what YAML would accept silently or what would hang the checks that follow: a key
    written twice in one mapping (YAML keeps the last, so a criterion vanishes), an alias inside
    its own anchor, and aliases that expand past MAX_SPEC_NODES values."""
    duplicates: list[str] = []
    open_: set[int] = set()
    count = 0

    def walk(node: yaml.Node, at: Path_) -> None:
        nonlocal count
        count += 1
        if count > MAX_SPEC_NODES:
            raise SpecError([problem(path, node.start_mark.line + 1, dotted(at),
                                     f"over {MAX_SPEC_NODES:,} values once aliases are expanded",
                                     "write the values out instead of nesting aliases")])
        if id(node) in open_:
            raise SpecError([problem(path, node.start_mark.line + 1, dotted(at), "an alias refers to itself",
                                     "remove the *alias from inside its own &anchor")])
        open_.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else str(key.start_mark.line)
                if name in first and key.tag != MERGE_TAG:
                    duplicates.append(problem(path, key.start_mark.line + 1, dotted((*at, name)),
                                              f"'{name}' is written twice (first on line {first[name]}); YAML would keep only the last",
                                              "remove or rename one of the two"))
                first.setdefault(name, key.start_mark.line + 1)
                walk(value, (*at, name))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*at, i))
        open_.discard(id(node))

    walk(root, ())
    if duplicates:
        raise SpecError(duplicates)


def record_lines(node: yaml.Node, at: Path_, lines: dict[Path_, int]) -> None:
    lines.setdefault(at, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key.start_mark.line)
            lines[(*at, name)] = key.start_mark.line + 1
            record_lines(value, (*at, name), lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            record_lines(item, (*at, i), lines)


def comma_splits(node: yaml.Node, at: Path_, found: dict[Path_, tuple[str, str]]) -> None:
    """Keys that an unquoted comma cut out of the value before them, in a flow mapping.

    In ``{instruction: Rate it from 1 to 5, fluently}`` YAML ends the value at the comma and reads
    ``fluently`` as a key with no value. A key like that, after a plain (unquoted) value, is recorded
    with the key and value it was cut from, so the error can say what happened instead of "unknown key".
    Only prose counts (a space on either side of the comma): `{source: doc, text}` lacks a value instead.
    """
    if isinstance(node, yaml.MappingNode):
        previous: tuple[str, yaml.Node] | None = None
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else str(key.start_mark.line)
            empty = (isinstance(value, yaml.ScalarNode) and value.value == "" and plain(value)
                     and value.start_mark.index == value.end_mark.index)
            if (node.flow_style and empty and isinstance(key, yaml.ScalarNode) and plain(key)
                    and previous is not None and isinstance(previous[1], yaml.ScalarNode) and plain(previous[1])
                    and (" " in previous[1].value or " " in name)):  # prose, not `{a: x, b}` with a value left out
                found[(*at, name)] = (previous[0], previous[1].value)
            previous = (name, value)
            comma_splits(value, (*at, name), found)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            comma_splits(item, (*at, i), found)


def plain(node: yaml.ScalarNode) -> bool:
    """Written without quotes (the pure-Python parser says None, libyaml '')."""
    return node.style in (None, "")
