"""The paper's claims, checked against our runs.

A claim of a sweep file's report says that a row beats another (its baseline) on a column. For each,
the row-minus-baseline difference paired by seed (in percentage points) and its 95% t interval, twice:
under the paper's attack (the claim's column) and under the per-example worst case of every attack the
runs faced (``final/robust_acc/worst``, ``selected/...`` for a selected column). The verdict:
"supported" where the interval lies above zero, "reversed" below zero, "not shown" where it spans zero
or there are fewer than two seed pairs.

Natural accuracy is comparable when the row's is at most ``natural_tolerance`` points below the
baseline's (the seed-paired mean, of the same epoch as the column): one-sided on purpose, since a row
that is also more accurate has not bought its robustness with accuracy. A claim on accuracy itself
(a natural or training accuracy column) has no worst case and no comparability to check.
"""
from __future__ import annotations

import math
from typing import Callable

import pandas as pd

from ..sweep.spec import Claim, Report

SUPPORTED, NOT_SHOWN, REVERSED = "supported", "not shown", "reversed"
TITLE = "The paper's claims, checked (row minus baseline, points; seed-paired, 95% t interval)"
LEGEND = ("\nsupported: the interval lies above zero; not shown: it spans zero, or fewer than two seed pairs; "
          "reversed: it lies below zero. Worst case: per example, wrong under any attack the runs faced. "
          "Natural accuracy (seed-paired, same epoch): comparable when the row's is at most the claim's "
          "natural_tolerance (default 1 point) below the baseline's.\n")
COLUMNS = ["claim", "statement", "row", "beats", "column", "under", "metric", "n", "gap", "ci95_low", "ci95_high",
           "verdict", "natural_gap", "natural"]


def pair_keys(report: Report, *matches: dict) -> list[str]:
    """Runs pair by seed; in a figure over a config key (Fig. 4's depth), by that key too, unless one of
    the sides' ``matches`` fixes it (Fig. 6's claims compare one K with another)."""
    over_key = report.kind == "figure" and report.x not in ("columns", "epoch") \
        and not any(report.x in match for match in matches)
    return ["p.seed", f"p.{report.x}"] if over_key else ["p.seed"]


def paired(ours: pd.DataFrame, base: pd.DataFrame, metric: str, base_metric: str | None = None,
           scale: float = 100, keys: tuple | list = ("p.seed",)) -> pd.Series:
    """Row minus baseline, one difference per seed (and key) both sides have, times ``scale``. Runs that
    share a seed on one side (a row spanning a figure's x, paired without it) are averaged first."""
    base_metric = base_metric or metric
    keys = list(keys)
    if ours.empty or base.empty or metric not in ours or base_metric not in base \
            or not set(keys) <= set(ours.columns) & set(base.columns):
        return pd.Series(dtype=float)
    ours_by, base_by = ours.groupby(keys)[metric].mean(), base.groupby(keys)[base_metric].mean()
    return (ours_by - base_by).dropna() * scale


def interval(diffs: pd.Series) -> dict:
    """n, mean and its 95% t interval (NaN bounds with fewer than two differences)."""
    from scipy import stats

    n = len(diffs)
    mean = float(diffs.mean()) if n else math.nan
    half = stats.t.ppf(0.975, n - 1) * diffs.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
    return {"n": n, "gap": mean, "ci95_low": mean - half, "ci95_high": mean + half}


def verdict(found: dict) -> str:
    if found["n"] < 2 or math.isnan(found["ci95_low"]):
        return NOT_SHOWN
    if found["ci95_low"] > 0:
        return SUPPORTED
    return REVERSED if found["ci95_high"] < 0 else NOT_SHOWN


def _robust(metric: str) -> bool:
    return "robust_acc/" in metric


def _sibling(metric: str, name: str) -> str:
    """The metric of the same evaluation (final/..., selected/...) under another name: robust_acc/worst."""
    return metric[:metric.index("robust_acc/")] + name


def check(report: Report, runs_of: Callable[[dict], pd.DataFrame]) -> pd.DataFrame:
    """One record per claim and measure (the paper's attack, the worst case). ``runs_of(match)``: the
    usable runs whose config has the values in ``match``."""
    rows, columns = {r.label: r for r in report.rows}, {c.label: c for c in report.columns}
    records = []
    for number, claim in enumerate(report.claims, 1):
        ours_match = {**rows[claim.row].match, **claim.where}
        base_match = {**rows[claim.beats].match, **claim.where, **claim.beats_where}
        ours, base, keys = runs_of(ours_match), runs_of(base_match), pair_keys(report, ours_match, base_match)
        col, base_col = columns[claim.column], columns[claim.beats_column or claim.column]
        measures = [("paper's attack", col.metric, base_col.metric, col.scale)]
        natural_gap, natural = math.nan, "n/a"
        if _robust(col.metric) and _robust(base_col.metric):
            measures.append(("worst case", _sibling(col.metric, "robust_acc/worst"),
                             _sibling(base_col.metric, "robust_acc/worst"), 100))
            natural_gap, natural = _natural(claim, ours, base, col.metric, base_col.metric, keys)
        for under, metric, base_metric, scale in measures:
            found = interval(paired(ours, base, metric, base_metric, scale, keys))
            records.append({"claim": number, "statement": claim.statement, "row": _side(claim.row, claim.where),
                            "beats": _side(claim.beats, {**claim.where, **claim.beats_where}),
                            "column": _column(claim), "under": under, "metric": metric, **found,
                            "verdict": verdict(found), "natural_gap": natural_gap, "natural": natural})
    return pd.DataFrame.from_records(records, columns=COLUMNS)


def _natural(claim: Claim, ours, base, metric: str, base_metric: str, keys) -> tuple[float, str]:
    found = interval(paired(ours, base, _sibling(metric, "natural_acc"), _sibling(base_metric, "natural_acc"),
                            100, keys))
    if not found["n"]:
        return math.nan, "unknown"
    return found["gap"], "comparable" if found["gap"] >= -claim.natural_tolerance else "not comparable"


def _side(label: str, where: dict) -> str:
    return f"{label} ({', '.join(f'{k}={v}' for k, v in where.items())})" if where else label


def _column(claim: Claim) -> str:
    return claim.column if not claim.beats_column else f"{claim.column} vs {claim.beats_column}"


def table(long: pd.DataFrame) -> pd.DataFrame:
    """The display form: one line per claim; a cell per measure, and the natural accuracy's."""
    lines = []
    for _, part in long.groupby("claim", sort=True):
        first = part.iloc[0]
        cells = {r["under"]: cell(r) for _, r in part.iterrows()}
        lines.append({"Claim": first["statement"].replace("|", "/"),
                      "Comparison": f"{first['row']} vs {first['beats']}, {first['column']}",
                      "Paper's attack": cells["paper's attack"],
                      "Worst case, all attacks": cells.get("worst case", "n/a"),
                      "Natural accuracy": _natural_cell(first)})
    return pd.DataFrame.from_records(lines).set_index("Claim")


def cell(record) -> str:
    """One measure of a claim: its verdict, the gap and its interval."""
    if not record["n"]:
        return f"{NOT_SHOWN} (no seed pairs)"
    if record["n"] < 2:
        return f"{NOT_SHOWN}: {record['gap']:+.2f} (n=1)"
    return f"{record['verdict']}: {record['gap']:+.2f} [{record['ci95_low']:+.2f}, {record['ci95_high']:+.2f}] " \
           f"(n={record['n']})"


def _natural_cell(record) -> str:
    if record["natural"] in ("n/a", "unknown"):
        return record["natural"]
    return f"{record['natural']} ({record['natural_gap']:+.2f})"
