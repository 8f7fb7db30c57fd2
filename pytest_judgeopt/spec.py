"""Judge spec files (``*.judge.yaml``): parse, validate, and turn into plain objects.

A spec is written by hand, so every mistake must come back as one sentence that names the
file, the line, the key and the fix. Structure is checked against the shipped JSON Schema
(the same file editors use), then the rules a schema cannot say (scale order, fractions that
add up, files that exist) are checked here, with the line of the offending key.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from . import metric_spec
from .agreement import BUILTIN_METRICS as BUILTIN_METRICS
from .agreement import CORRELATIONS, MetricOptions
from .problems import Path_, dotted, problem
from .problems import SpecError as SpecError  # the errors of a spec are raised and caught by that name
from .problems import SpecWarning as SpecWarning
from .spec_schema import line_number, schema_problems
from .yaml_lines import read_yaml

MAX_SPEC_BYTES = 1_000_000

# Model settings that say where and how to connect, not what to answer: left out of the
# answer cache's key (a committed cache replays against any endpoint) and out of reports.
CONNECTION_PARAMS = frozenset({"api_base", "base_url", "api_key", "api_version", "organization", "headers",
                               "extra_headers", "timeout", "max_retries", "num_retries", "aws_access_key_id",
                               "aws_secret_access_key", "vertex_credentials"})
# Words that make a model setting, a header or an environment variable a credential by its name
# (api_key, aws_secret_access_key, Authorization, X-Api-Key, OPENAI_API_KEY, HF_TOKEN). Whole words
# only, so max_tokens and TOKENIZERS_PARALLELISM are settings, not secrets.
CREDENTIAL_WORDS = frozenset({"key", "keys", "apikey", "token", "secret", "secrets", "password", "passwd", "credential",
                              "credentials", "auth", "authorization"})


def is_credential_name(name: str) -> bool:
    """The one rule for "does this name hold a credential?": reports leave such settings out, and
    error texts have their values removed (the model's own and those in the environment)."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name)  # apiKey -> api_Key
    return not CREDENTIAL_WORDS.isdisjoint(re.split(r"[^a-z0-9]+", spaced.lower()))


@dataclass(frozen=True)
class Model:
    """A litellm model string plus the keyword arguments to call it with."""

    name: str
    params: tuple[tuple[str, Any], ...] = ()
    by_endpoint: bool = False  # the spec's `cache: {by_endpoint: true}`: answers are cached per endpoint

    @classmethod
    def parse(cls, value: str | dict[str, Any]) -> Model:
        if isinstance(value, str):
            return cls(value)
        params = {k: v for k, v in value.items() if k != "name"}
        return cls(value["name"], tuple(sorted(params.items())))

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.params)

    @property
    def endpoint(self) -> str | None:
        """Where calls go (``api_base``, or ``base_url``); None for the provider's own."""
        params = dict(self.params)
        value = params.get("api_base") or params.get("base_url")
        return None if value is None else str(value).rstrip("/")

    def describe(self) -> str:
        """The name with the settings that change answers; no endpoints, no credentials."""
        shown = {k: v for k, v in self.params if k not in CONNECTION_PARAMS and not is_credential_name(k)}
        return self.name if not shown else f"{self.name} {json.dumps(shown, sort_keys=True)}"


@dataclass(frozen=True)
class Criterion:
    name: str
    instruction: str
    scale: tuple[float, float]
    min_rho: float | None
    max_parse_failure_rate: float
    line: int
    # ends written as integers ([1, 5]) make an integer scale: its structured schema allows 1, 2, ..., 5;
    # ends written with a decimal point ([0.0, 1.0]) make a continuous one
    integer: bool = True
    max_error: float | None = None  # the threshold of an error metric (mae, rmse): lower is better
    humans_margin: float | None = None  # `min_rho: humans` (0.0) or `{humans: m}`: the annotators' agreement + m
    alt_test: bool = False  # correlation.gate: alt_test gates the item whatever its threshold

    @property
    def report_only(self) -> bool:
        """No gate at all (`min_rho: null`, `max_error: null`, no alt_test): the item reports and never fails."""
        return self.min_rho is None and self.max_error is None and self.humans_margin is None and not self.alt_test


@dataclass(frozen=True)
class DatasetSpec:
    paths: tuple[Path, ...]  # one file, or several (a list or a glob in `dataset.path`) read as one dataset
    declared_format: str | None  # `dataset.format`; else each file's extension says
    id: str
    group: str | None
    inputs: dict[str, str]
    scores: str | dict[str, str] | None  # None: the annotators' aggregate is the human score
    delimiter: str | None = None
    skip_missing: bool = False
    annotators: str | None = None  # a field of {criterion: [score per annotator]} (annotators.py)
    aggregate: str = "mean"  # mean, median or majority of the annotators' scores

    @property
    def path(self) -> Path:
        return self.paths[0]

    @property
    def format(self) -> str:
        return self.format_of(self.path)

    def format_of(self, path: Path) -> str:
        return self.declared_format or path.suffix.lstrip(".").lower()


@dataclass(frozen=True)
class Split:
    train: float = 0.2
    val: float = 0.2
    test: float = 0.6
    seed: int = 0
    by: str | None = None  # "group" or "record"; unset: by group when dataset.group is set, else by record


@dataclass(frozen=True)
class Correlation:
    method: str = "spearman"
    level: str = "pooled"
    gate: str = "point"
    confidence: float = 0.95
    # below this many documents (samples without dataset.group) there is no interval, and no verdict
    # that rests on one; benchmarks/validity.py measures the interval's coverage from here on
    min_groups: int = 8
    # level group: the share of documents that may be skipped (constant scores, too few scored pairs).
    # A skipped document's judgments count for nothing, as failed judgments do: the same 10% allowance
    # as judge.max_parse_failure_rate's default.
    max_skipped_groups: float = 0.1
    positive: float | None = None  # f1's positive class; None: the scale's highest value
    weights: str = "quadratic"  # weighted_kappa: quadratic or linear
    alpha_level: str = "ordinal"  # krippendorff_alpha: ordinal, interval or nominal
    # gate: alt_test (annotators.py): the cost-benefit margin, the FDR level, the documents each annotator needs
    epsilon: float = 0.1
    alpha: float = 0.05
    min_items: int = 30

    @property
    def options(self) -> MetricOptions:
        return MetricOptions(self.positive, self.weights, self.alpha_level)


@dataclass(frozen=True)
class JudgeSettings:
    system: str | None = None
    template: str | None = None
    temperature: float = 0.0
    max_tokens: int = 64
    n: int = 1
    logprobs: bool | str = "auto"  # True, False or "auto": on for the embedded model, where they cost nothing
    structured: bool | str = "auto"  # True, False or "auto": on where the model supports a response schema
    max_parse_failure_rate: float = 0.1


@dataclass(frozen=True)
class CacheSettings:
    by_endpoint: bool = False


@dataclass(frozen=True)
class Interference:
    max_drop: float = 0.02
    confidence: float = 0.95
    inconclusive: str = "fail"  # or "pass": an undecided ::merged check passes


@dataclass(frozen=True)
class Baseline:
    """The ::baseline and ::compare items: how far a criterion may drop against the reference judge."""

    max_drop: float = 0.02
    inconclusive: str = "pass"  # a drop the interval cannot tell from noise passes (it is reported)


OPTIMIZE_MODES = ("ST", "SSS", "SSC", "SCC", "CCC")


@dataclass(frozen=True)
class Gate:
    metric: str = "spearman"
    rule: str | None = None  # None: the default of the mode run (optimize/gate.py: default_rule)
    tolerance: float = 0.0
    cases: bool = False  # a second gate: a rewrite that breaks a case that passed before it is rejected


@dataclass(frozen=True)
class Optimize:
    mode: str = "SSS"
    steps: int = 4
    batch_size: int = 3
    seed: int = 0
    temperature: float = 0.7
    max_instruction_chars: int = 1200
    max_tokens: int = 400
    study_runs: int = 3
    gate: Gate = Gate()
    prompts: dict[str, Path] = field(default_factory=dict)
    diagnostics: bool = False
    min_specificity: float | None = None
    min_adherence: float | None = None
    cases_in_prompt: bool = False  # the optimizer role sees the criterion's cases (never, unless the spec says so)


def mode_problem(mode: str) -> str | None:
    """Why a decomposition mode is not one of the five, or None when it is."""
    if mode in OPTIMIZE_MODES:
        return None
    if len(mode) == 3 and set(mode) <= {"S", "C"}:
        return (f"'{mode}' combines a stage and then separates a later one, but a joint text cannot be split back "
                "per criterion: once a stage is C, every later stage must be C")
    return f"'{mode}' is not a decomposition mode"


@dataclass(frozen=True)
class Spec:
    path: Path
    name: str
    model: Model | None
    models: dict[str, Model]
    dataset: DatasetSpec
    split: Split
    correlation: Correlation
    judge: JudgeSettings
    inference: str
    interference: Interference | None
    criteria: dict[str, Criterion]
    optimize: Optimize
    lines: dict[Path_, int] = field(repr=False, compare=False)
    cache: CacheSettings = CacheSettings()
    # the parsed YAML, for the parts checked against the data and hooks once those are loaded (cases, probes)
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    baseline: Baseline = Baseline()
    warnings: tuple[str, ...] = ()  # what the user should know about the spec that is not an error (SpecWarning)

    def line_of(self, *path: str | int) -> int | None:
        return self.lines.get(tuple(path))

    def model_for(self, role: str) -> Model | None:
        """The spec's model for a role: its override in ``models:``, else ``model:``."""
        return self.models.get(role, self.model)


def load_spec(path: str | Path, metrics: tuple[str, ...] = BUILTIN_METRICS) -> Spec:
    """Read and validate a spec; raise SpecError listing every problem found."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SpecError([problem(path, None, "", f"cannot read the file ({exc.strerror})", "check the path")]) from None
    if size > MAX_SPEC_BYTES:
        raise SpecError([problem(path, None, "", f"the file is {size:,} bytes, over the {MAX_SPEC_BYTES:,} limit for a spec",
                                 "keep data in the dataset file that `dataset.path` names")])
    splits: dict[Path_, tuple[str, str]] = {}
    data, lines = read_yaml(path, splits)
    problems = schema_problems(path, data, lines, splits)
    problems += [problem(path, lines.get(at), dotted(at), what, fix) for at, what, fix in metric_spec.missing_gates(data)]
    problems.sort(key=line_number)
    if not problems:
        problems = rule_problems(path, data, lines, metrics)
    if problems:
        raise SpecError(problems)
    return build(path, data, lines)


def rule_problems(path: Path, data: dict[str, Any], lines: dict[Path_, int], metrics: tuple[str, ...]) -> list[str]:
    """What the schema cannot express."""
    # .nan passes every minimum and maximum, then breaks the split sizes or any threshold check
    out = [problem(path, lines.get(at), dotted(at), f"{number} is not a finite number", "write a finite number")
           for at, number in non_finite(data)]
    if out:
        return out
    for name, body in data["criteria"].items():
        low, high = body["scale"]
        if not low < high:
            out.append(problem(path, lines.get(("criteria", name, "scale")), f"criteria.{name}.scale",
                               f"the lowest score {low} is not below the highest {high}", "write [lowest, highest], e.g. [1, 5]"))
    split = {**vars(Split()), **data.get("split", {})}
    total = split["train"] + split["val"] + split["test"]
    if abs(total - 1) > 1e-6:
        out.append(problem(path, lines.get(("split",)), "split",
                           f"train + val + test = {total:g}, not 1", "make the three fractions add up to 1"))
    elif split["test"] <= 0:
        out.append(problem(path, lines.get(("split", "test"), lines.get(("split",))), "split.test",
                           "the test split is empty, and the regression items evaluate on it", "give test a fraction above 0"))
    method = metric_spec.section(data).get("method", "spearman")
    if method not in metrics:
        guess = difflib.get_close_matches(method, metrics, n=1)
        method_at = metric_spec.method_key(data)
        out.append(problem(path, lines.get(method_at), dotted(method_at), f"unknown metric '{method}'",
                           f"did you mean '{guess[0]}'?" if guess else f"use one of: {', '.join(metrics)}"))
    out.extend(problem(path, lines.get(at, lines.get(at[:-1])), dotted(at), what, fix)
               for at, what, fix in metric_spec.problems(data))
    if split.get("by") == "group" and "group" not in data["dataset"]:
        out.append(problem(path, lines.get(("split", "by")), "split.by",
                           "split by group needs to know the groups", "set `dataset.group` to the field naming the "
                           "source document, or write `by: record`"))
    level = metric_spec.section(data).get("level", "pooled")
    if level == "group" and "group" not in data["dataset"]:
        out.append(problem(path, lines.get(("correlation", "level")), "correlation.level",
                           "level: group needs to know the groups", "set `dataset.group` to the field naming the source document"))
    scores = data["dataset"].get("scores")
    if scores is None and "annotators" not in data["dataset"]:
        out.append(problem(path, lines.get(("dataset",)), "dataset", "missing key 'scores'",
                           "add `scores:` with the field holding {criterion: score}, or `annotators:` with the field "
                           "holding each annotator's scores"))
    if isinstance(scores, dict):
        for name in data["criteria"]:
            if name not in scores:
                out.append(problem(path, lines.get(("dataset", "scores")), "dataset.scores",
                                   f"no field given for criterion '{name}'", f"add `{name}: <field with its human score>`"))
    written = data["dataset"]["path"]
    for i, entry in enumerate([written] if isinstance(written, str) else written):
        at = ("dataset", "path") if isinstance(written, str) else ("dataset", "path", i)
        if data_files(path.parent, entry):
            continue
        if GLOB_CHARS.search(entry):
            out.append(problem(path, lines.get(at), dotted(at), f"no file matches '{entry}' (in {path.parent})",
                               "fix the pattern; it is relative to the spec file"))
        else:
            out.append(problem(path, lines.get(at), dotted(at), f"no such file: {path.parent / entry}",
                               "give the data file's path relative to the spec file"))
    mode = data.get("optimize", {}).get("mode")
    if mode is not None and (why := mode_problem(mode)):
        out.append(problem(path, lines.get(("optimize", "mode")), "optimize.mode", why,
                           f"use one of {', '.join(OPTIMIZE_MODES)} (ST: each criterion alone; SSS: per criterion throughout)"))
    diagnostics = data.get("optimize", {}).get("diagnostics", {})
    for floor in ("min_specificity", "min_adherence"):
        if floor in diagnostics and not diagnostics.get("enabled", False):
            out.append(problem(path, lines.get(("optimize", "diagnostics", floor)), f"optimize.diagnostics.{floor}",
                               "a floor on a diagnostic that is not measured", "add `enabled: true` to optimize.diagnostics"))
    for role, file in data.get("optimize", {}).get("prompts", {}).items():
        if not (path.parent / file).is_file():
            out.append(problem(path, lines.get(("optimize", "prompts", role)), f"optimize.prompts.{role}",
                               f"no such file: {path.parent / file}", "give the template's path relative to the spec file"))
        else:
            out.extend(role_prompt_problems(path, lines, role, path.parent / file))
    template = data.get("judge", {}).get("template")
    if template is not None:
        known = set(data["dataset"]["inputs"]) | {"inputs", "criteria", "format"}
        unknown = template_fields(template) - known
        fix = "use {inputs}, {criteria}, {format} or a name from dataset.inputs; write {{ and }} for literal braces"
        if unknown:
            out.append(problem(path, lines.get(("judge", "template")), "judge.template",
                               f"unknown placeholder(s) {', '.join('{' + u + '}' for u in sorted(unknown))}", fix))
        else:
            try:  # {} or a bad !conversion or :format passes the names check, then fails on every judgment
                template.format_map(dict.fromkeys(known, ""))
            except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
                out.append(problem(path, lines.get(("judge", "template")), "judge.template",
                                   f"the template cannot be filled in ({exc})", fix))
            else:  # one mistake, one message: a misspelt {summray} is reported above, not also as {summary} unused
                unused = unused_inputs(path, data, lines)
                if unused is not None and data.get("judge", {}).get("unused_inputs", "error") == "error":
                    out.append(unused)
    return out


def unused_inputs(path: Path, data: dict[str, Any], lines: dict[Path_, int]) -> str | None:
    """A custom template that never places an input: the judge would rate a text it was never shown.

    ``{inputs}`` places all of them; otherwise each must appear by name. An error unless the spec
    says ``judge.unused_inputs: warn`` (an input kept in the data for the cases or the report only).
    """
    template = data.get("judge", {}).get("template")
    if template is None:
        return None
    used = template_fields(template)
    if "inputs" in used:
        return None
    unused = [name for name in data["dataset"]["inputs"] if name not in used]
    if not unused:
        return None
    names = ", ".join("{" + name + "}" for name in unused)
    return problem(path, lines.get(("judge", "template")), "judge.template",
                   f"the template never uses the input(s) {names}, so the judge would not see them",
                   f"put {names} (or {{inputs}} for all of them) in the template, remove them from dataset.inputs, "
                   "or set `judge.unused_inputs: warn` to go on anyway")


def role_prompt_problems(path: Path, lines: dict[Path_, int], role: str, file: Path) -> list[str]:
    """A role's custom prompt may use the placeholders the built-in one uses (they are what the role fills
    in) and no others: a stray {x} would otherwise be a KeyError in the middle of an optimization."""
    at = ("optimize", "prompts", role)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [problem(path, lines.get(at), dotted(at), f"cannot read {file} ({exc})", "save the template as UTF-8 text")]
    known = role_placeholders(role)
    shown = ", ".join("{" + name + "}" for name in sorted(known))
    fix = f"the {role} prompt can use {shown}; write {{{{ and }}}} for literal braces"
    unknown = template_fields(text) - known
    if unknown:
        return [problem(path, lines.get(at), dotted(at),
                        f"{file.name}: unknown placeholder(s) {', '.join('{' + u + '}' for u in sorted(unknown))}", fix)]
    try:
        text.format_map(dict.fromkeys(known, ""))
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
        return [problem(path, lines.get(at), dotted(at), f"{file.name} cannot be filled in ({exc})", fix)]
    return []


@cache
def role_placeholders(role: str) -> frozenset[str]:
    """What a role fills into its prompt: the placeholders of the built-in prompt, which uses every one."""
    text = resources.files("pytest_judgeopt").joinpath("prompts", f"{role}.txt").read_text(encoding="utf-8")
    return frozenset(template_fields(text))


GLOB_CHARS = re.compile(r"[*?[]")


def data_files(folder: Path, entry: str) -> list[Path]:
    """The files one entry of `dataset.path` names: a path, or a glob (sorted, so the order is stable)."""
    if GLOB_CHARS.search(entry):
        import glob

        return [Path(found).resolve() for found in sorted(glob.glob(str(folder / entry), recursive=True))
                if Path(found).is_file()]
    target = folder / entry
    return [target.resolve()] if target.is_file() else []


def non_finite(value: Any, at: Path_ = ()) -> list[tuple[Path_, float]]:
    if isinstance(value, float):
        return [] if math.isfinite(value) else [(at, value)]
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in non_finite(item, (*at, key))]
    if isinstance(value, list):
        return [found for i, item in enumerate(value) for found in non_finite(item, (*at, i))]
    return []


def template_fields(template: str) -> set[str]:
    import string

    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError:
        return {"<unbalanced braces>"}


def build(path: Path, data: dict[str, Any], lines: dict[Path_, int]) -> Spec:
    defaults = JudgeSettings()
    # unused_inputs is a check made here, not a setting of the judgments (nor part of a lock's hash)
    judge = JudgeSettings(**{**vars(defaults), **{k: v for k, v in data.get("judge", {}).items() if k != "unused_inputs"}})
    criteria = {
        name: Criterion(
            name=name,
            instruction=body["instruction"].strip(),
            scale=(float(body["scale"][0]), float(body["scale"][1])),
            min_rho=threshold(body),
            max_parse_failure_rate=body.get("max_parse_failure_rate", judge.max_parse_failure_rate),
            line=lines.get(("criteria", name), 1),
            integer=all(isinstance(end, int) and not isinstance(end, bool) for end in body["scale"]),
            max_error=body.get("max_error"),
            humans_margin=metric_spec.humans_margin(body.get(metric_spec.threshold_key(body) or "min_rho")),
            alt_test=metric_spec.section(data).get("gate") == "alt_test",
        )
        for name, body in data["criteria"].items()
    }
    fit = [problem(path, lines.get(at), dotted(at), what, fix) for at, what, fix in metric_spec.fit_warnings(data)]
    ds = data["dataset"]
    written = [ds["path"]] if isinstance(ds["path"], str) else ds["path"]
    paths = tuple(dict.fromkeys(found for entry in written for found in data_files(path.parent, entry)))
    interference = data.get("interference", {})
    return Spec(
        path=path,
        name=data.get("name") or path.name.removesuffix(".yaml").removesuffix(".yml").removesuffix(".judge"),
        model=Model.parse(data["model"]) if "model" in data else None,
        models={role: Model.parse(value) for role, value in data.get("models", {}).items()},
        dataset=DatasetSpec(
            paths=paths,
            declared_format=ds.get("format"),
            id=ds.get("id", "id"),
            group=ds.get("group"),
            inputs=dict(ds["inputs"]),
            scores=ds.get("scores"),
            delimiter=ds.get("delimiter"),
            skip_missing=ds.get("skip_missing", False),
            annotators=ds.get("annotators"),
            aggregate=ds.get("aggregate", "mean"),
        ),
        split=Split(**data.get("split", {})),
        correlation=Correlation(**metric_spec.section(data)),
        judge=judge,
        # one criterion merged is the separate prompt: call it that, so no run reports "(merged)" for it
        inference=data.get("inference", "separate") if len(criteria) > 1 else "separate",
        interference=None if interference is False or len(criteria) < 2 else Interference(**interference),
        criteria=criteria,
        optimize=build_optimize(path, data.get("optimize", {}), metric_spec.section(data).get("method", "spearman")),
        lines=lines,
        cache=CacheSettings(**data.get("cache", {})),
        raw=data,
        baseline=Baseline(**data.get("baseline", {})),
        warnings=tuple(filter(None, [unused_inputs(path, data, lines), *fit])),  # unused_inputs: reached only with warn
    )


def threshold(body: dict[str, Any]) -> float | None:
    """The higher-is-better threshold as a number (`min_rho`, or its alias `min_agreement`); None for none,
    for `max_error` and for `humans` (resolved once the annotators' agreement is measured)."""
    key = metric_spec.threshold_key(body)
    value = body.get(key) if key in ("min_rho", metric_spec.THRESHOLD_ALIAS) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def default_gate_metric(method: str) -> str:
    """The optimizer gates on spearman, as before, unless the items measure with one of the label or error
    metrics: then on that metric, so a rewrite is kept for what the items test."""
    return method if method in BUILTIN_METRICS and method not in CORRELATIONS else "spearman"


def build_optimize(path: Path, data: dict[str, Any], method: str = "spearman") -> Optimize:
    mode = data.get("mode", Optimize.mode)
    gate = data.get("gate", {})
    diagnostics = data.get("diagnostics", {})
    return Optimize(
        mode=mode,
        **{k: data[k] for k in ("steps", "batch_size", "seed", "temperature", "max_instruction_chars", "max_tokens", "study_runs")
           if k in data},
        gate=Gate(metric=gate.get("metric", default_gate_metric(method)), rule=gate.get("rule"), tolerance=gate.get("tolerance", 0.0),
                  cases=gate.get("cases", False)),
        prompts={role: (path.parent / file).resolve() for role, file in data.get("prompts", {}).items()},
        diagnostics=diagnostics.get("enabled", False),
        min_specificity=diagnostics.get("min_specificity"),
        min_adherence=diagnostics.get("min_adherence"),
        cases_in_prompt=data.get("cases_in_prompt", False),
    )
