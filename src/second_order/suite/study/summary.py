"""The study's written answer: does second order pay off here, and which kind? In numbers.

Every sentence is computed from the final runs: per workload, the fastest method to the
target (median optimizer seconds over seeds), the fastest of each family and its time
relative to the fastest first-order method, and how many seeds reached the target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from second_order.suite.study.plan import Study
from second_order.suite.study.targets import TimeToTarget, median_and_spread
from second_order.suite.tracking.runs import Run

FIRST_ORDER = "first-order"


def _median_seconds(ts: Sequence[TimeToTarget]) -> float:
    return median_and_spread([t.seconds for t in ts])[0]


def _rank(method: str, ts: Sequence[TimeToTarget]) -> tuple[float, int, str]:
    """Faster first; among equal times (all ∞: missed) the one that reached the target on more seeds."""
    return (_median_seconds(ts), -sum(t.reached for t in ts), method)


def fastest_by_family(study: Study, per: Mapping[str, Sequence[TimeToTarget]]) -> dict[str, tuple[str, float]]:
    """``{family: (method, median seconds)}``: each family's fastest method (``inf``: none reached the target).

    When every method of a family missed, the one that reached the target on the most seeds.
    """
    best: dict[str, tuple[str, float]] = {}
    for method, ts in sorted(per.items(), key=lambda item: _rank(*item)):
        best.setdefault(study.family(method), (method, _median_seconds(ts)))
    return best


def _ratio(t: float, ref: float) -> str:
    if not math.isfinite(t):
        return "missed"
    if not math.isfinite(ref) or ref <= 0:
        return "—"
    return f"{t / ref:.2f}×"


def headline(study: Study, ttt: Mapping[str, Mapping[str, Sequence[TimeToTarget]]]) -> list[str]:
    """A markdown table: per family and workload, its fastest method, seconds and time relative to first order."""
    workloads = list(ttt)
    families = list(dict.fromkeys([*study.families, *(study.family(m) for per in ttt.values() for m in per)]))
    lines = [
        "| family | " + " | ".join(workloads) + " |",
        "|---|" + "---|" * len(workloads),
    ]
    by_w = {w: fastest_by_family(study, ttt[w]) for w in workloads}
    for family in families:
        cells = []
        for w in workloads:
            if family not in by_w[w]:
                cells.append("—")
                continue
            method, t = by_w[w][family]
            ref = by_w[w].get(FIRST_ORDER, ("", math.nan))[1]
            if math.isfinite(t):
                cells.append(f"{method}: {t:.2f} s ({_ratio(t, ref)})")
            else:
                ts = ttt[w][method]
                cells.append(f"{method}: missed (reached on {sum(x.reached for x in ts)} of {len(ts)} seeds)")
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return lines


def answer(study: Study, ttt: Mapping[str, Mapping[str, Sequence[TimeToTarget]]], goal) -> list[str]:
    """One paragraph per workload and a closing verdict."""
    out: list[str] = []
    wins = solved = 0
    for w, per in ttt.items():
        ranked = sorted(per, key=lambda m: (_median_seconds(per[m]), m))
        if not ranked:
            continue
        best = ranked[0]
        t_best = _median_seconds(per[best])
        fams = fastest_by_family(study, per)
        first = fams.get(FIRST_ORDER)
        second = sorted(((t, m, f) for f, (m, t) in fams.items() if f != FIRST_ORDER), key=lambda x: (x[0], x[1]))
        reached_all = [m for m in per if study.family(m) != FIRST_ORDER and all(t.reached for t in per[m])]
        n_second = sum(1 for m in per if study.family(m) != FIRST_ORDER)
        target, source = goal[w]
        text = f"**{w}** (target {study.target_metric} ≥ {target:.4g}, {source}): "
        if not math.isfinite(t_best):
            out.append(text + "no method reached the target within the budget.")
            continue
        solved += 1
        text += f"fastest is {best} ({study.family(best)}), {t_best:.2f} s of optimizer time"
        if study.family(best) != FIRST_ORDER:
            wins += 1
            if first is not None and math.isfinite(first[1]):
                text += (
                    f", {first[1] / t_best:.2f}× faster than the best first-order method ({first[0]}, {first[1]:.2f} s)"
                )
            else:
                text += "; no first-order method reached the target"
        elif second and first is not None:
            t2, m2, f2 = second[0]
            text += (
                f"; the fastest second-order method, {m2} ({f2}), takes {_ratio(t2, first[1])} the time of {first[0]}"
                if math.isfinite(t2)
                else "; no second-order method reached the target"
            )
        steps = {m: median_and_spread([t.steps for t in ts])[0] for m, ts in per.items()}
        fewest = min(steps, key=lambda m: (steps[m], m))
        if math.isfinite(steps[fewest]) and fewest != best:
            text += (
                f"; in steps, {fewest} ({study.family(fewest)}) needs the fewest, {steps[fewest]:.0f} against "
                f"{steps[best]:.0f}"
            )
        text += f". {len(reached_all)} of {n_second} second-order methods reached the target on every seed."
        out.append(text)
    verdict = f"**Verdict.** A second-order method was fastest to the target on {wins} of {len(ttt)} workloads"
    if solved > wins:
        verdict += (
            f"; on {solved - wins} a first-order method got there first: the extra work per step of the "
            "curvature methods did not buy enough progress per second"
        )
    if solved < len(ttt):
        verdict += f"; on {len(ttt) - solved} no method reached the target within the budget"
    return out + [verdict + "."]


def summary_markdown(
    study: Study,
    runs: Mapping[str, Mapping[str, Sequence[Run]]],
    ttt: Mapping[str, Mapping[str, Sequence[TimeToTarget]]],
    goal: Mapping[str, tuple[float, str]],
    how: str = "one at a time",
) -> str:
    """``how``: how and where the final runs ran, from their records (:func:`.report.serial_note`)."""
    seeds = ", ".join(map(str, study.final["seeds"]))
    excluded = "; ".join(f"{m} ({why})" for m, why in study.excluded.items()) or "none"
    lines = [
        f"# Does second order pay off? Study `{study.name}`",
        "",
        f"Workloads: {', '.join(w.name for w in study.workloads)}. Methods ({len(study.methods)}): "
        f"{', '.join(study.methods)}. Left out: {excluded}.",
        f"Tuning: {study.tuning['trials']} Optuna trials (the configured values first, then TPE) "
        "per method and workload, "
        f"{study.tuning.get('epochs', 1)} epoch(s) each, minimising the final validation loss on "
        f"{study.validation_examples} examples held out of the training set. Final runs: the best "
        f"parameters, {study.final.get('epochs')} epoch(s), seeds {seeds}, {how}; validation "
        f"every {study.final.get('eval_every_steps')} steps of each epoch.",
        "Time to target is the optimizer time (compilation, evaluation and logging excluded) until the "
        "validation metric first reaches the target; medians over seeds; a missed target counts as ∞.",
        "",
        "## Fastest method of each family (median seconds to target, and relative to the fastest first-order method)",
        "",
        *headline(study, ttt),
        "",
        "## The answer",
        "",
        *(p + "\n" for p in answer(study, ttt, goal)),
        "Files: `time_to_target.md` (every method), `performance_profile.png`, "
        f"`{study.target_metric}_vs_time_<workload>.png` (the target drawn), `loss_vs_time_<workload>.png`, "
        "`tuning.md`.",
        "",
    ]
    return "\n".join(lines)
