"""Device-hours: what a trial costs, what a sweep has spent, whether the next trial still fits its
budget, and how much time a sweep's trials have left.

A trial's cost is its resources times its wall time, over every attempt: ``cost/wall_s``,
``cost/cpu_hours`` and ``cost/gpu_hours`` in its run (logged at step 0, the latest value wins); the
sweep's parent run holds their sums over every trial of every launch. ``budget: {gpu_hours: N}`` (or
``cpu_hours``) caps that sum: the driver starts no trial once what is spent, plus what the running
trials are expected to cost in all, plus the expected cost of the next trial would exceed it. The
expected cost of a trial is the mean of the trials completed so far (this launch and earlier ones),
else the running trials' cost extrapolated from their epochs; with nothing seen yet, trials start as
long as the spending is under the cap. Running trials always finish.
"""
from __future__ import annotations

import time

WALL, CPU_HOURS, GPU_HOURS = "cost/wall_s", "cost/cpu_hours", "cost/gpu_hours"
FINAL_EVAL = "final_eval_time"  # seconds of a trial's final evaluation (ieskips.training.train)


def cost(wall_s: float, cpu: float, gpu: float) -> dict:
    return {WALL: wall_s, CPU_HOURS: cpu * wall_s / 3600, GPU_HOURS: gpu * wall_s / 3600}


def log_cost(client, run_id: str, wall_s: float, cpu: float, gpu: float) -> None:
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in cost(wall_s, cpu, gpu).items()])


def run_hours(run, kind: str) -> float:
    return float(run.data.metrics.get(f"cost/{kind}_hours", 0.0))


def log_sweep_total(client, parent_id: str, runs) -> dict:
    """The sweep's totals over its trial runs, logged to its parent run."""
    totals = {key: sum(float(r.data.metrics.get(key, 0.0)) for r in runs) for key in (WALL, CPU_HOURS, GPU_HOURS)}
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    client.log_batch(parent_id, metrics=[Metric(k, v, stamp, 0) for k, v in totals.items()])
    return totals


class Ledger:
    """The driver's running account of a budget (kept by the sweep's searcher and saved with it)."""

    def __init__(self, limit: float | None, kind: str, unit: float, spent_before: float = 0.0, seen=()):
        self.limit, self.kind, self.unit = limit, kind, unit  # unit: GPUs (or CPUs) per trial
        self.spent_before = spent_before  # earlier launches
        self.seen = list(seen)  # hours of trials completed in earlier launches
        self.finished: list[float] = []  # hours of trials completed in this launch
        self.running: dict[str, list] = {}  # trial id -> [hours so far, epochs done, epochs in all]
        self.refused = False  # the budget stopped a trial from starting

    def start(self, trial_id: str, epochs: int) -> None:
        self.running[trial_id] = [0.0, 0, max(1, epochs)]

    def update(self, trial_id: str, result: dict) -> None:
        entry = self.running.get(trial_id)
        if entry is None or not result:
            return
        wall = result.get(WALL, result.get("time_total_s"))
        if wall is not None:
            entry[0] = self.unit * float(wall) / 3600
        entry[1] = int(result.get("epoch", result.get("training_iteration", entry[1])) or 0)

    def complete(self, trial_id: str, result: dict | None = None) -> None:
        self.update(trial_id, result or {})
        entry = self.running.pop(trial_id, None)
        if entry is not None:
            self.finished.append(entry[0])

    def expected(self) -> float | None:
        done = self.seen + self.finished
        if done:
            return sum(done) / len(done)
        guesses = [hours * total / epochs for hours, epochs, total in self.running.values() if epochs]
        return sum(guesses) / len(guesses) if guesses else None

    def committed(self) -> float:
        """Spent, plus what the running trials will have cost when they end: the mean of the completed
        trials where there are some (a first epoch's setup makes extrapolation overshoot), else their
        own epochs extrapolated."""
        done = self.seen + self.finished
        guess = sum(done) / len(done) if done else self.expected()
        running = 0.0
        for hours, epochs, total in self.running.values():
            own = hours * total / epochs if epochs and not done else guess
            running += max(hours, own if own is not None else hours)
        return self.spent_before + sum(self.finished) + running

    def spent(self) -> float:
        return self.spent_before + sum(self.finished) + sum(entry[0] for entry in self.running.values())

    def admits(self) -> bool:
        if self.limit is None:
            return True
        guess, committed = self.expected(), self.committed()
        fits = committed < self.limit if guess is None else committed + guess <= self.limit
        self.refused |= not fits
        return fits


def time_left(runs, epochs_of, planned_epochs=()) -> tuple[dict, float | None, float | None]:
    """Per run id, the estimated seconds its trial still needs; the mean for a trial not started; and
    the mean seconds of a final evaluation, None where no run has timed one yet.

    From what the runs have spent so far: a run's wall time per epoch (``cost/wall_s``, less its final
    evaluation's ``final_eval_time``, over its epochs logged) times the epochs it lacks, plus the mean
    final evaluation of the runs that made one; a trial not started gets the mean seconds per epoch of
    every run times its epochs (``planned_epochs``: theirs; the mean is returned per trial) plus that."""
    rates, finals, left, to_come = [], [], {}, []
    for run in runs:
        done = int(run.data.metrics.get("epoch", 0) or 0)
        wall = float(run.data.metrics.get(WALL, 0.0))
        final = run.data.metrics.get(FINAL_EVAL)
        if final is not None:
            finals.append(float(final))
        if done and wall:
            rates.append((wall - float(final or 0.0)) / done)
            left[run.info.run_id] = rates[-1] * max(0, epochs_of(run) - done)
            if done < epochs_of(run):
                to_come.append(run.info.run_id)  # its final evaluation is still to come
    final = sum(finals) / len(finals) if finals else None
    for run_id in to_come:
        left[run_id] += final or 0.0
    rate = sum(rates) / len(rates) if rates else None
    planned = list(planned_epochs)
    mean_new = rate * sum(planned) / len(planned) + (final or 0.0) if rate is not None and planned else None
    return left, mean_new, final


def total_left(left: dict, unfinished_ids, per_new: float | None, not_started: int,
               slots: int = 1) -> tuple[float | None, float | None]:
    """Seconds a sweep still needs, from :func:`time_left`'s estimates: of trial time, each unfinished
    run's (a killed or failed one too: `sweep run` continues it from its checkpoint; one that timed no
    epoch counts as a new trial) and ``per_new`` for each trial not started; and of the machine, with
    ``slots`` trials at once, no less than the longest one. None where one trial cannot be guessed."""
    rests = [left.get(run_id, per_new) for run_id in unfinished_ids] + [per_new] * not_started
    if None in rests:
        return None, None
    total = sum(rests)
    return total, max([total / max(1, min(slots, len(rests))), *rests])


def hours(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.1f}min" if seconds < 5400 else f"{seconds / 3600:.1f}h"
