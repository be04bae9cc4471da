"""MLflow runs -> pandas -> the paper's tables (Markdown, CSV, LaTeX) and figures (PNG), beside the
published numbers, with every cell traced to its run ids.

Values are percentages: mean ± std over seeds with n shown; a row with no run is "missing", one whose
runs all failed is "failed", one whose runs have not finished yet is "unfinished", never a zero.
Beyond the paper: the worst case over every attack a run faced, the IE-vs-vanilla gap with a 95%
confidence interval over seed-paired differences, and the paper's claims checked (orchestration/reports/claims.py).
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from ieskips.errors import ConfigError

from . import against_paper, claims
from ..sweep.spec import Report, ReportColumn, SweepSpec
from ..records.tracking import TRIAL_TAG, find_parent_run, sweep_trial_runs

# Beyond the paper: per example, the worst over every attack the run faced.
WORST = ReportColumn(label="Worst case, all attacks (%)", metric="final/robust_acc/worst")


def load_runs(client, experiment: str, sweep: str) -> pd.DataFrame:
    """One row per trial run: run_id, trial_id, status, stopped_early, seed, params (``p.<key>``),
    metrics (their names)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ConfigError(f"no MLflow experiment {experiment!r} at {client.tracking_uri}; run the sweep first")
    records = []
    for run in sweep_trial_runs(client, found.experiment_id, sweep):
        tags = run.data.tags
        records.append({"run_id": run.info.run_id, "trial_id": tags.get(TRIAL_TAG), "status": run.info.status,
                        "stopped_early": tags.get("ieskips.stopped_early") == "true",
                        **{f"p.{k}": v for k, v in run.data.params.items()}, **run.data.metrics})
    return pd.DataFrame.from_records(records, columns=["run_id", "trial_id", "status", "stopped_early"]
                                     if not records else None)


def _matching(runs: pd.DataFrame, match: dict) -> pd.DataFrame:
    keep = pd.Series(True, index=runs.index)
    for key, value in match.items():
        column = runs.get(f"p.{key}")
        keep &= column.astype(str) == str(value) if column is not None else False
    return runs[keep]


def _usable(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[(runs["status"] == "FINISHED") & ~runs["stopped_early"]]


def cells(runs: pd.DataFrame, report: Report) -> pd.DataFrame:
    """The long form: one record per (row, column) with mean, std, n, published, diff, state, run ids."""
    records = []
    columns = list(report.columns) + [WORST]
    for row in report.rows:
        for label, members in _groups(runs, report, row):
            good = _usable(members)
            for i, col in enumerate(columns):
                values = (good[col.metric].dropna() * col.scale) if col.metric in good else pd.Series(dtype=float)
                published = row.published[i] if i < len(row.published) else None
                records.append(_record(label, col, values, published, _state(members, good, values), good))
    return pd.DataFrame.from_records(records)


def _record(label, col, values, published, state, good) -> dict:
    mean = values.mean() if len(values) else math.nan
    return {"row": label, "column": col.label, "metric": col.metric, "x": col.x, "n": len(values), "mean": mean,
            "std": values.std(ddof=1) if len(values) > 1 else math.nan,
            "min": values.min() if len(values) else math.nan, "max": values.max() if len(values) else math.nan,
            "published": math.nan if published is None else float(published),
            "diff": mean - published if published is not None and len(values) else math.nan, "state": state,
            "run_ids": " ".join(good.loc[values.index, "run_id"]) if len(values) else ""}


def _groups(runs: pd.DataFrame, report: Report, row):
    """A row's runs; for a figure over a config key, one group per value of that key (its x)."""
    members = _matching(runs, row.match)
    key = f"p.{report.x}"
    if report.kind != "figure" or report.x in ("columns", "epoch") or key not in members:
        return [(row.label, members)]
    values = sorted(members[key].unique(), key=lambda v: _numeric(pd.Series([v])).iloc[0])
    return [(f"{row.label}, {report.x}={v}", members[members[key] == v]) for v in values]


UNFINISHED = ("RUNNING", "SCHEDULED", "KILLED")


def _state(members, good, values) -> str:
    if members.empty:
        return "missing"
    if len(values):
        return "ok"
    if good.empty and members["stopped_early"].any():
        return "stopped early"
    if good.empty and members["status"].isin(UNFINISHED).any():
        return "unfinished"  # still running, or stopped before its end (a sweep run again continues it)
    return "failed" if good.empty else "no metric"


def gaps(runs: pd.DataFrame, report: Report) -> pd.DataFrame:
    """IE minus vanilla per robust column, paired by seed (and a figure's x key); mean and 95% CI (t)."""
    labels = {row.label: row for row in report.rows}
    records = []
    for row in report.rows:
        if not row.baseline or row.baseline not in labels:
            continue
        base_match = labels[row.baseline].match
        ours, base = _usable(_matching(runs, row.match)), _usable(_matching(runs, base_match))
        keys = claims.pair_keys(report, row.match, base_match)
        for col in [c for c in report.columns if c.metric.startswith("final/robust_acc")] + [WORST]:
            if col.metric not in ours or col.metric not in base:
                continue
            paired = claims.paired(ours, base, col.metric, scale=col.scale, keys=keys)
            records.append({"row": row.label, "baseline": row.baseline, "column": col.label,
                            **claims.interval(paired)})
    return pd.DataFrame.from_records(records, columns=["row", "baseline", "column", "n", "gap", "ci95_low",
                                                       "ci95_high"])


def _cell(record) -> str:
    if record["state"] != "ok":
        return record["state"]
    spread = "" if math.isnan(record["std"]) else f" ± {record['std']:.2f}"
    return f"{record['mean']:.2f}{spread} (n={record['n']})"


def _num(value) -> str:
    return "—" if math.isnan(value) else f"{value:.2f}"


def wide(long: pd.DataFrame) -> pd.DataFrame:
    """The display table: the paper's rows; per column ours, paper and difference."""
    table = pd.DataFrame(index=pd.Index(long["row"].unique(), name="Model"))
    for column in long["column"].unique():
        part = long[long["column"] == column].set_index("row")
        table[f"{column} ours"] = part.apply(_cell, axis=1)
        if part["published"].notna().any():
            table[f"{column} paper"] = part["published"].map(_num)
            table[f"{column} Δ"] = part["diff"].map(lambda v: "—" if math.isnan(v) else f"{v:+.2f}")
    return table


def markdown(table: pd.DataFrame, title: str, first: str = "Model") -> str:
    head = [first, *table.columns]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join([str(i), *map(str, r)]) + " |" for i, r in zip(table.index, table.values)]
    return "\n".join(lines) + "\n"


def latex(table: pd.DataFrame, title: str) -> str:
    esc = lambda s: str(s).replace("%", r"\%").replace("±", r"$\pm$").replace("Δ", r"$\Delta$").replace("_", r"\_")  # noqa: E731
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{esc(title)}}}",
             r"\begin{tabular}{l" + "r" * len(table.columns) + "}", r"\toprule",
             " & ".join(["Model", *map(esc, table.columns)]) + r" \\", r"\midrule"]
    lines += [" & ".join([esc(i), *map(esc, r)]) + r" \\" for i, r in zip(table.index, table.values)]
    return "\n".join(lines + [r"\bottomrule", r"\end{tabular}", r"\end{table}"]) + "\n"


def figure(long: pd.DataFrame, runs: pd.DataFrame, report: Report, client, path: Path) -> Path:
    """Our curves with seed bands; the published points, where the paper states numbers, as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if report.x_metric:
        _scatter(ax, runs, report)
    for row in () if report.x_metric else report.rows:
        for col in report.columns:
            xs, mean, std = _series(long, runs, report, row, col, client)
            if len(xs):
                label = row.label if len(report.columns) == 1 else f"{row.label}, {col.label}"
                line, = ax.plot(xs, mean, marker="o", label=label)
                ax.fill_between(xs, mean - std.fillna(0), mean + std.fillna(0), alpha=0.2, color=line.get_color())
        if report.x == "columns" and any(v is not None for v in row.published):
            points = [(c.x, v) for c, v in zip(report.columns, row.published) if v is not None]
            ax.scatter(*zip(*points), marker="x", color="black", label=f"{row.label} (paper)")
    if not report.x_metric:
        ax.set_xlabel({"columns": "attack steps", "epoch": "epoch"}.get(report.x, report.x))
        ax.set_ylabel("accuracy (%)")
    ax.set_title(report.title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _scatter(ax, runs: pd.DataFrame, report: Report) -> None:
    """One point per run: x its ``x_metric`` (a fraction, in %), y its robust accuracies (the report's
    robust columns, then the worst case, each its own marker); a colour per row and the seed beside each
    point, so that a reader sees whether the two move together."""
    import matplotlib.pyplot as plt

    robust = [c for c in report.columns if c.metric.startswith("final/robust_acc/")] + [WORST]
    colours = plt.get_cmap("tab10").colors
    for i, row in enumerate(report.rows):
        good = _usable(_matching(runs, row.match))
        for marker, col in zip("osD^v", robust):
            if report.x_metric not in good or col.metric not in good:
                continue
            points = good[[report.x_metric, col.metric, "p.seed"]].dropna()
            ax.scatter(points[report.x_metric] * 100, points[col.metric] * col.scale, marker=marker,
                       color=colours[i % len(colours)], label=row.label if marker == "o" else None)
            for _, point in points.iterrows():
                ax.annotate(f"s{point['p.seed']}", (point[report.x_metric] * 100, point[col.metric] * col.scale),
                            fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set_xlim(-5, 105)
    named = next((c.label for c in report.columns if c.metric == report.x_metric), report.x_metric)
    ax.set_xlabel(named)
    ax.set_ylabel(", ".join(f"{m} {c.label}" for m, c in zip("●■◆▲▼", robust)), fontsize=7)


def _series(long, runs, report, row, col, client):
    if report.x == "columns":
        part = long[(long["row"] == row.label) & long["x"].notna() & (long["state"] == "ok")]
        return part["x"].to_numpy(), part["mean"], part["std"]
    good = _usable(_matching(runs, row.match))
    if report.x == "epoch":
        history = pd.DataFrame([{"x": m.step, "run": r, "y": m.value * col.scale} for r in good["run_id"]
                                for m in client.get_metric_history(r, col.metric)])
    else:
        key = f"p.{report.x}"
        history = pd.DataFrame({"x": _numeric(good[key]), "y": good[col.metric] * col.scale}) \
            if col.metric in good and key in good else pd.DataFrame(columns=["x", "y"])
    if history.empty:
        return [], pd.Series(dtype=float), pd.Series(dtype=float)
    grouped = history.groupby("x")["y"]
    return grouped.mean().index.to_numpy(), grouped.mean().reset_index(drop=True), grouped.std().reset_index(drop=True)


def _numeric(values: pd.Series) -> pd.Series:
    """Config values as x positions: numbers as they are, names by their number (preact_resnet34 -> 34)."""
    numbers = pd.to_numeric(values, errors="coerce")
    return numbers.fillna(pd.to_numeric(values.astype(str).str.extract(r"(\d+)$")[0], errors="coerce"))


def write_report(spec: SweepSpec, tracking_uri: str, out: Path, log_to_parent: bool = True) -> list[Path]:
    """Every file of the sweep's report under ``out``; also logged to the sweep's parent MLflow run."""
    from mlflow.tracking import MlflowClient

    if spec.report is None:
        raise ConfigError(f"sweep {spec.name!r} has no report section")
    client = MlflowClient(tracking_uri)
    runs = load_runs(client, spec.experiment, spec.name)
    report = spec.report
    long = cells(runs, report)
    table = wide(long)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / spec.name
    text = markdown(table, report.title) + (f"\n{report.note}\n" if report.note else "")
    checked = claims.check(report, lambda match: _usable(_matching(runs, match)))
    plain = against_paper.paragraph(long, checked)
    text += f"\n{plain}" if plain else ""
    gap = gaps(runs, report)
    if not gap.empty:
        text += "\n" + markdown(gap.set_index("row").round(2).astype(str),
                                 "IE vs vanilla, percentage points (seed-paired, 95% CI)")
    if not checked.empty:
        text += "\n" + markdown(claims.table(checked), claims.TITLE, "Claim") + claims.LEGEND
    files = [stem.with_suffix(".md"), stem.with_suffix(".csv"), stem.with_suffix(".tex"),
             out / f"{spec.name}_provenance.csv"]
    files[0].write_text(text)
    table.to_csv(files[1])
    files[2].write_text(latex(table, report.title))
    long.to_csv(files[3], index=False)
    if not gap.empty:
        files.append(out / f"{spec.name}_gaps.csv")
        gap.to_csv(files[-1], index=False)
    if not checked.empty:
        files.append(out / f"{spec.name}_claims.csv")
        checked.to_csv(files[-1], index=False)
    if report.kind == "figure":
        files.append(figure(long, runs, report, client, stem.with_suffix(".png")))
    if log_to_parent:
        experiment_id = client.get_experiment_by_name(spec.experiment).experiment_id
        parent = find_parent_run(client, experiment_id, spec.name)
        if parent is None:
            raise ConfigError(f"sweep {spec.name!r} has no parent run in experiment {spec.experiment!r}")
        try:
            for path in files:
                client.log_artifact(parent.info.run_id, str(path), "report")
        except Exception as err:  # noqa: BLE001  (a store we can read but not write artifacts to: the files stand)
            import logging

            reason = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
            logging.getLogger("ieskips").warning(
                "ieskips: warning: the report is in %s, but it could not be logged to the sweep's parent run %s "
                "(%s: %s)", out, parent.info.run_id, type(err).__name__, reason[:200])
    return files
