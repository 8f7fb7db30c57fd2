"""The notes under the table: for each case, why the figure is what it is, in numbers the run measured.

A missed target's note says what limits it and summarises the py-spy profile that showed it.
"""

from __future__ import annotations

from typing import Any

from common import Row, Settings


def by_case(rows: list[Row], case: str) -> list[Row]:
    return [r for r in rows if r.case == case]


def profile_text(profile: dict[str, Any] | None) -> str:
    if not profile:
        return ""
    if "error" in profile:
        return f" (py-spy failed: {profile['error'][:200]})"
    owners = ", ".join(f"{name} {share:.0%}" for name, share in list(profile["owners"].items())[:5])
    frames = ", ".join(f"{name.split(' (')[0]} {share:.0%}" for name, share in list(profile["deepest_project_frames"].items())[:4])
    left_out = (f"; {profile['import_samples_left_out']} samples of module imports left out"
                if profile.get("import_samples_left_out") else "")
    return (f" Profile (py-spy --gil, {profile['samples']} samples of a fresh run of this case{left_out}): {owners}. "
            f"Deepest project frames: {frames}.")


def litellm_ms(rows: list[Row]) -> float | None:
    base = by_case(rows, "0. baseline")
    return base[0].value if base else None


def judge_note(row: Row, rows: list[Row], s: Settings, profile: dict[str, Any] | None) -> str:
    d = row.details
    calls = d["calls"][0]
    base = litellm_ms(rows)
    ms = d["cpu_ms_per_call"]
    text = (f"{calls} calls, at most {max(d['max_in_flight'])} in flight. The pass used {d['cpu_floor_s']:.1f} s of CPU "
            f"({ms:.1f} ms per call)")
    text += f"; litellm alone costs {base:.1f} ms per call (case 0)." if base else "."
    floor = max(row.ideal or 0, d["cpu_floor_s"])
    if row.met:
        return text + " The pass keeps C calls in flight and adds little around them."
    return (text + f" The model could answer {s.concurrency / s.latency:.0f} calls/s at C={s.concurrency}; one core "
            f"running litellm's per-call work manages about {1000 / ms:.0f}/s, so the pass is CPU-bound, not waiting on the "
            f"model: its floor here is the CPU time, {floor:.1f} s ({floor / row.ideal:.2f} x ideal), and it measured "
            f"{row.value / floor:.2f} x that floor (the rest is other processes taking the 2 cores: see the load average). "
            "What was ours is fixed: each reply was priced twice (litellm prices it, then to_reply priced it again); "
            "now litellm's stamped price is reused." + profile_text(profile))


def step_note(rows: list[Row], s: Settings, profile: dict[str, Any] | None) -> str:
    parts = []
    for row in rows:
        d = row.details
        planned = d["planned"]
        mode = row.measure.split()[1]
        formula = " + ".join(f"{role} {n}" for role, n in planned.items())
        parts.append(f"{mode}: calls {d['calls'][0]} = formula {formula} = {sum(planned.values())} "
                     f"({'equal' if d['calls_equal_formula'] else 'NOT equal'}; per role from the step record: "
                     f"{'same' if d['per_role'] == planned else d['per_role']}); CPU {d['cpu_s'][0]:.2f} s for the step")
    text = "; ".join(parts) + ". The step has exactly 5 dependent phases (judge, loss, gradient, optimizer, gate): loss " \
                              "and gradient run per sample, the gate judges all val samples at once."
    if all(r.met for r in rows):
        return text
    floors = "; ".join(f"{r.measure.split()[1]} {r.ideal:.2f} s + {median_of(r.details['cpu_s']):.2f} s of CPU = "
                       f"{r.ideal + median_of(r.details['cpu_s']):.2f} s, measured {r.value:.2f} s" for r in rows)
    return (text + " The missing time is CPU, not waiting: each phase costs one latency plus its calls' client work "
            f"(about {1000 * median_of(rows[0].details['cpu_s']) / max(1, rows[0].details['calls'][0]):.1f} ms per call, "
            "nearly all in litellm), and the gate's 100 calls alone take longer than a latency to issue and read. A floor "
            f"on one core is the phases' latency plus the step's CPU: {floors} (the rest is the 2 cores shared with other "
            "processes). No serial await was found between or inside phases." + profile_text(profile))


def median_of(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def cached_note(row: Row, profile: dict[str, Any] | None) -> str:
    d = row.details
    phases = ", ".join(f"{name} {seconds:.3f} s" for name, seconds in d["phases_s"].items())
    text = (f"{d['cache_hits']} cache hits, calls {d['calls']}; {d['per_judgment_us']:.0f} us per judgment overall. "
            f"Where the time goes: {phases}; the whole process {d['process_s']:.2f} s. The agreement phase and 'the rest' "
            "include importing scipy.stats (first needed there), which alone takes about a second on this machine.")
    if row.met:
        return text
    return text + " Most of the miss is that import, a third-party cost paid once per process." + profile_text(profile)


def startup_note(rows: list[Row]) -> str:
    row = rows[0]
    d = row.details
    text = (f"With the plugin {min(d['with_plugin_s']):.2f}-{max(d['with_plugin_s']):.2f} s, without "
            f"{min(d['without_plugin_s']):.2f}-{max(d['without_plugin_s']):.2f} s ({d['collected']}). Importing the plugin "
            f"module: {d['plugin_import_ms']:.0f} ms. In-process breakdown: {breakdown_text(d.get('breakdown'))}.")
    plain = [r for r in rows[1:] if r.value is not None]
    if plain:
        text += (f" In a project without spec files the plugin adds {plain[0].value:.0f} ms (noise between runs of the same "
                 "command is tens of ms here); its pytest_configure no longer imports the data and spec modules and YAML "
                 "(about 30 ms), which only collecting a spec needs.")
    if row.met:
        return text
    return (text + " With 50 specs the rest is collection itself: it parses and validates every spec (YAML with line "
            "numbers, the JSON Schema) and loads and checks its data (192 records each here), by design, since a mistake "
            "in a spec or its data is a collection error. That is a few milliseconds per spec, so 50 specs cannot fit in "
            "100 ms.")


def breakdown_text(b: dict[str, float] | None) -> str:
    if not b:
        return "n/a"
    return ", ".join(f"{name} {ms:.0f} ms" for name, ms in b.items())


def textgrad_note(rows: list[Row], s: Settings, profile: dict[str, Any] | None) -> str:
    ours = rows[0]
    theirs = [r for r in rows if r.measure.startswith("TextGrad ") and r.value is not None]
    failed = [r for r in rows if r.value is None]
    if failed:
        return failed[0].note
    if not theirs:
        return "TextGrad was skipped (--skip-textgrad)."
    tg = theirs[0]
    phases = ", ".join(f"{k} {v:.2f} s" for k, v in tg.details["phases_s"].items())
    batch, gate_rounds = 3, -(-100 // s.concurrency)
    bound = (4 * batch + 1 + gate_rounds) / (4 + gate_rounds)
    text = (f"Both judge the same 3 train texts and the same 100 val texts at C={s.concurrency} (TextGrad's reference "
            f"prompt-optimization script validates on a 32-thread pool). Calls: ours {ours.details['calls'][0]} "
            f"({ours.details['per_role']}), TextGrad {tg.details['calls'][0]} (4B+1 = 13, then 100). TextGrad's phases: "
            f"{phases}. Its 13 train-side calls run one after another; ours run in 4 phases. With the gate on threads in "
            f"both, latency alone bounds the speed-up at ({4 * batch + 1} + {gate_rounds}) / (4 + {gate_rounds}) = "
            f"{bound:.1f} x, so the 10 x target cannot be met against TextGrad's own loop; and ours pays litellm's "
            "~5 ms of CPU per call where TextGrad's OpenAI client pays about 1 ms, which eats the rest of the lead at C=32.")
    serial = [r for r in rows if "plain loop" in r.measure]
    if serial:
        text += (f" With TextGrad's gate in a plain loop the step takes {serial[0].value:.1f} s, "
                 f"{serial[0].details['speedup_vs_ours']:.1f} x ours.")
    return text + profile_text(profile)


def scale_note(rows: list[Row], profile: dict[str, Any] | None) -> str:
    sizes = [r for r in rows if r.details.get("peak_rss_mb") is not None]
    summary = rows[-1]
    d = summary.details
    per = "; ".join(f"{r.measure.split()[0]}: {r.value:.1f} s, peak {r.details['peak_rss_mb']:.0f} MB "
                    f"({', '.join(f'{k} {v:.1f} s' for k, v in r.details['phases_s'].items())})" for r in sizes)
    text = (f"{per}. Memory: {summary.value:.1f} kB per sample above a base of {d['base_mb']:.0f} MB (the texts themselves "
            f"are about 2.4 kB a sample, held as records and prompts); the middle size measured {d['measured_mid_mb']:.0f} MB "
            f"against {d['predicted_mid_mb']:.0f} MB on the line through the ends. Time per sample at the largest size is "
            f"{d['time_per_sample_ratio']:.2f} x that at the smallest (a quadratic step would make it ~10 x).")
    largest = sizes[-1].details["phases_s"]
    share = largest["agreement (rho + interval)"] / sum(v for k, v in largest.items() if k != "import the package")
    text += (f" At the largest size the agreement phase is {share:.0%} of the time: the jackknife interval correlates "
             "the samples 200 times, each time without one block of them (scipy's spearmanr), linear per block.")
    if summary.met:
        return text
    return text + profile_text(profile)


def embedded_note(rows: list[Row]) -> str:
    d = rows[0].details
    usage = ", ".join(f"{role} {u['calls']}" for role, u in d.get("usage", {}).items())
    accepted = [r.measure.split(", ")[1] for r in rows[1:] if r.details["accepted_steps"]]
    merged = "; ".join(f"{r.measure.split(', ')[1]} {fmt_rho(r.details['optimizer_test_before_merged'])} -> "
                       f"{fmt_rho(r.details['optimizer_test_after_merged'])} (n={r.details['merged_pairs']})" for r in rows[1:])
    failures = "; ".join(f"{r.measure.split(', ')[1]}: {r.details['failures_before']}" for r in rows[1:] if r.details["failures_before"])
    return (f"{d['seconds_per_judgment']:.2f} s per judgment ({d['calls']} calls in {d['judge_pass_s']:.0f} s, up to 4 in flight, "
            f"decoded together by the embedded model). Optimization (SSS, 1 step, batch 2, samples per split "
            f"{d.get('split_sizes')}): {d.get('optimize_s', 0):.0f} s for {d.get('optimize_calls')} calls ({usage}); the "
            f"loss, gradient and optimizer replies are long, so they dominate. Instructions the gate kept: "
            f"{', '.join(accepted) or 'none'}. The rho above is the regression items' protocol (separate prompts, the 2 "
            f"test documents); the optimizer's own before/after on its merged prompts (1 test document): {merged}. "
            f"Failed judgments before: {failures or 'none'}. 'undefined' means constant or unparsable scores on these few "
            "samples: a 135M model is a weak judge, as the README says.")


def example_note(rows: list[Row]) -> str:
    d = rows[0].details
    load = d["load"]
    during = (f"mean {load['during_1min_mean']:.1f}, max {load['during_1min_max']:.1f}" if load["during_1min_mean"] is not None
              else f"{load['before_1min']:.1f} at the start")
    rhos = "; ".join(f"{r.measure.split(', ')[1].split(' ')[0]} {r.shown}" for r in rows[3:])
    runs = d.get("runs") or []
    spread = ("; the runs took " + ", ".join(f"{r['wall']:.0f} s ({r['cpu']:.0f} s of CPU)" for r in runs) +
              ": the same work, so their CPU seconds say how fast the machine was at the time") if len(runs) > 1 else ""
    text = (f"A fresh pytest process from start to exit (imports, collection, the judge pass with each sample's merged call "
            f"next to its separate ones, the jackknife intervals, the report), from an empty answer cache each time"
            f"{spread}. The median run: {d['cpu_s']:.0f} s of CPU in {rows[0].value:.0f} s: on "
            f"{load['cores']} cores the 1-minute load average was {load['before_1min']:.1f} before and {during} during the "
            "run (the run's own two llama.cpp threads count in it: about 2 means the cores were its own, well above 2 "
            "that other work shared them). Every reply is grammar-held JSON and every score is "
            f"probability-weighted; failed judgments: {d['failed_separate']} separate, {d['failed_merged']} merged. Test rho "
            f"(separate / merged): {rhos}. SmolLM2-135M is a weak judge: these correlations are near zero and the items "
            "fail on them, as they should.")
    if rows[0].met is False and rows[0].value is not None and rows[0].value > 240:
        text += (" The time target is missed: nearly all of it is the model evaluating prompt tokens (the "
                 "README's example section says what was measured and tried).")
    return text


def fmt_rho(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def annotate(rows: list[Row], profiles: dict[str, Any], s: Settings) -> None:
    """Fill each row's note (the first row of a case carries the case's note)."""
    for case, rows_of_case in group(rows).items():
        profile = profiles.get(case)
        first = rows_of_case[0]
        if case == "1. judge pass":
            first.note = judge_note(first, rows, s, profile)
        elif case == "2. optimization step":
            first.note = step_note(rows_of_case, s, profile)
        elif case == "3. cached re-run":
            first.note = cached_note(first, profile)
        elif case == "4. start-up":
            first.note = startup_note(rows_of_case)
        elif case == "5. vs TextGrad":
            first.note = textgrad_note(rows_of_case, s, profile)
        elif case == "6. scale":
            first.note = scale_note(rows_of_case, profile)
        elif case == "7. embedded model":
            first.note = embedded_note(rows_of_case)
        elif case == "8. limits":
            first.note = ("Each huge input loaded once per repeat in the benchmark's process; the unit tests check the "
                          "same inputs by what the loader did (calls counted, memory traced), not by the clock.")
        elif case == "9. main job":
            first.note = example_note(rows_of_case)
        elif case == "0. baseline":
            first.note = ("The same server and concurrency, calling litellm.acompletion directly: the CPU every call costs "
                          "before any project code runs. On 2 shared cores this, not the model, is the limit of cases 1, 2 "
                          "and 5.")


def group(rows: list[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for row in rows:
        out.setdefault(row.case, []).append(row)
    return out
