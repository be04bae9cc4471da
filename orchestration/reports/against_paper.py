"""The report's plain words on where our numbers and the paper's part, written from the measured numbers
(never by hand, so they follow the runs as a sweep grows).

Each published cell against the spread of our seeds: the paper's number within the lowest and highest
seed, or ours higher (lower) on every seed; with one seed there is no spread, only the difference. Each
claim of the paper: reproduced (supported under the paper's attack and under the worst case of every
attack), reproduced only under the paper's attack, not reproduced, or contradicted (reversed).
"""
from __future__ import annotations

import pandas as pd

from . import claims

TITLE = "Against the paper"


def paragraph(long: pd.DataFrame, checked: pd.DataFrame) -> str:
    """Markdown: a heading, a line per row with published numbers, a line per claim; empty with neither."""
    lines = _published(long) + _claims(checked)
    return f"### {TITLE}\n\n" + "\n".join(f"- {line}" for line in lines) + "\n" if lines else ""


def _published(long: pd.DataFrame) -> list[str]:
    lines = []
    for row, part in long[long["published"].notna() & (long["state"] == "ok")].groupby("row", sort=False):
        n = int(part["n"].min())
        said = [_against(c) for _, c in part.iterrows()]
        seeds = f"{n} seeds" if n > 1 else "1 seed (no spread to judge by yet)"
        lines.append(f"{row}, {seeds}: " + "; ".join(said) + ".")
    return lines


def _against(c) -> str:
    if c["n"] < 2:
        return f"{c['column']} {c['mean']:.2f} vs the paper's {c['published']:.2f}"
    spread = f"{c['min']:.2f} to {c['max']:.2f}"
    if c["min"] <= c["published"] <= c["max"]:
        return f"{c['column']}: the paper's {c['published']:.2f} within ours ({spread})"
    side = "higher" if c["published"] < c["min"] else "lower"
    return f"{c['column']}: ours {side} on every seed ({spread} vs the paper's {c['published']:.2f})"


def _claims(checked: pd.DataFrame) -> list[str]:
    lines = []
    for _, part in checked.groupby("claim", sort=True) if not checked.empty else ():
        by = {r["under"]: r for _, r in part.iterrows()}
        paper, worst = by["paper's attack"], by.get("worst case")
        claim = f"{paper['row']} over {paper['beats']} on {paper['column']}: "
        claim += f"under the paper's attack {claims.cell(paper)}"
        claim += f"; under the worst case of every attack {claims.cell(worst)}." if worst is not None else "."
        if paper["verdict"] == claims.REVERSED:
            lines.append(f"Contradicted: {claim}")
        elif paper["verdict"] == claims.NOT_SHOWN:
            lines.append(f"Not reproduced: {claim}")
        elif worst is not None and worst["verdict"] != claims.SUPPORTED:
            lines.append(f"Reproduced only under the paper's attack, not under the worst case: {claim}")
        else:
            lines.append(f"Reproduced: {claim}")
    return lines
