"""Writing a sweep's bundle (``ieskips results export``): its layout is in ``bundle.py``, which reads it back."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import yaml

from ieskips import __version__
from ieskips.errors import ConfigError

from ..sweep.identity import complete
from ..sweep.spec import SweepSpec
from .bundle import BUNDLE_FILE, FORMAT, METRIC_COLUMNS, METRICS_FILE, RUN_FILE, SPEC_FILE, VERSION, _safe, local_key, \
    origin, sha256
from .run_artifacts import RESUME_DIR
from .tracking import find_parent_run, sweep_trial_runs


def export_sweep(client, spec: SweepSpec, folder: Path) -> dict:
    """Write the sweep's parent run and every trial run to ``folder``; files of an earlier export of the
    same sweep that are gone are removed, files the bundle does not list are left alone."""
    experiment = client.get_experiment_by_name(spec.experiment)
    parent = find_parent_run(client, experiment.experiment_id, spec.name) if experiment else None
    trials = sweep_trial_runs(client, experiment.experiment_id, spec.name) if experiment else []
    if parent is None and not trials:
        raise ConfigError(f"sweep {spec.name!r} has no runs in experiment {spec.experiment!r} at "
                          f"{client.tracking_uri}; run it first, or pass --tracking-uri where it ran")
    old = _previous_files(folder, spec.name)
    folder.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))  # same file system: files move, not copy
    try:
        (stage / SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
        if parent is not None:
            _export_run(client, parent, stage / "parent")
        names = []
        for run in sorted(trials, key=lambda r: (r.info.run_name or "", origin(r))):
            names.append(_folder_name(run, names))
            _export_run(client, run, stage / "runs" / names[-1])
        files = {p.relative_to(stage).as_posix(): sha256(p) for p in sorted(stage.rglob("*")) if p.is_file()}
        _install(stage, folder, files, old)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    manifest = {"format": FORMAT, "version": VERSION, "sweep": spec.name, "experiment": spec.experiment,
                "parent": "parent" if parent is not None else None, "runs": [f"runs/{n}" for n in names],
                "written_by": {"ieskips": __version__, "mlflow": _mlflow_version()}, "files": files}
    (folder / BUNDLE_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")  # last
    return {"runs": len(trials), "parent": parent is not None, "files": len(files) + 1,
            "bytes": sum((folder / rel).stat().st_size for rel in files)}


def _install(stage: Path, folder: Path, files: dict, old: set) -> None:
    """Move the staged files into place and remove the earlier export's files that are gone (and the
    folders they leave empty). The old manifest goes first: a crash midway leaves no bundle, not a wrong one."""
    (folder / BUNDLE_FILE).unlink(missing_ok=True)
    for rel in files:
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / rel, folder / rel)
    for rel in sorted(old - set(files)):
        (folder / rel).unlink(missing_ok=True)
        for up in (folder / rel).parents:
            if up == folder or not up.is_dir() or any(up.iterdir()):
                break
            up.rmdir()


def _previous_files(folder: Path, sweep: str) -> set[str]:
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{folder} is a file; give a folder for the bundle")
    path = folder / BUNDLE_FILE
    if not path.is_file():
        return set()
    try:
        old = json.loads(path.read_text())
        old_sweep, files = old["sweep"], set(old["files"])
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} is not a readable bundle manifest; remove it or export elsewhere") from None
    if old_sweep != sweep:
        raise ConfigError(f"{folder} holds the bundle of sweep {old_sweep!r}; export {sweep!r} to another folder")
    return {rel for rel in files if _safe(rel)}


def _folder_name(run, taken: list[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", run.info.run_name or "") or origin(run)
    return name if name not in taken else f"{name}-{origin(run)[:8]}"


def _export_run(client, run, folder: Path) -> None:
    folder.mkdir(parents=True)
    outputs = run.outputs.model_outputs if run.outputs else []
    record = {"id": origin(run), "name": run.info.run_name, "status": run.info.status,
              "start_time": run.info.start_time, "end_time": run.info.end_time,
              "params": {k: v for k, v in sorted(run.data.params.items()) if not local_key(k)},
              "tags": {k: v for k, v in sorted(run.data.tags.items()) if not local_key(k)},
              "datasets": [_dataset(d) for d in run.inputs.dataset_inputs] if run.inputs else [],
              "model_step": outputs[0].step if outputs else None}
    (folder / RUN_FILE).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    rows = sorted((m.key, m.step, m.timestamp, m.value) for key in run.data.metrics
                  for m in client.get_metric_history(run.info.run_id, key))
    with open(folder / METRICS_FILE, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(METRIC_COLUMNS)
        writer.writerows((k, s, t, repr(float(v))) for k, s, t, v in rows)
    done = complete(run)  # a finished run's resume point is history: its stored model is the result
    for artifact in client.list_artifacts(run.info.run_id):
        if not (done and artifact.path == RESUME_DIR):
            client.download_artifacts(run.info.run_id, artifact.path, str(folder / "artifacts"))


def _dataset(given) -> dict:
    d = given.dataset
    return {"name": d.name, "digest": d.digest, "source_type": d.source_type, "source": d.source,
            "schema": d.schema, "profile": d.profile, "tags": {t.key: t.value for t in given.tags}}


def _mlflow_version() -> str:
    from importlib import metadata

    return metadata.version("mlflow")
