"""A sweep as a folder of plain files (a *bundle*), and back: ``ieskips results export | import``
(writing it: ``bundle_export.py``).

Layout (text diffs well in git; the only binary files are the stored models and per-example results)::

    bundle.json                  format, version, sweep, experiment, and the sha256 of every other file
    sweep.yaml                   the sweep's spec (its smoke version for a smoke sweep)
    parent/, runs/<run name>/    the parent run and each trial run:
        run.json                 origin id, name, status, start/end time, params, tags, data sets, model step
        metrics.csv              every metric's whole history: key, step, timestamp (ms), value
        artifacts/...            config.json, manifest.json, model/weights.pt, per_example/*.npz, report/,
                                 and an unfinished run's resume/checkpoint.pt (its trial resumes from it)

A run keeps its *origin* id (the id in the store where it ran; an imported run carries it as its
``ieskips.imported_from`` tag), so importing a bundle twice, or into the store it came from, creates
nothing, and exporting an imported store gives the same files back. Import skips a run whose origin or
whose complete identity (``identity.complete``) the store already has: ``sweep run`` afterwards runs
only the trials still missing. The leases of the drivers that wrote a run (``lease.py``) stay behind:
they are the store's coordination, not results. Everything is read and checked (hashes, JSON, CSV, the
spec, every stored model and per-example file) before anything is written to the store; each stored
model is then registered again as the run's logged model (``run_artifacts._register``).

Not mlflow-export-import: its release (1.2.0 on PyPI) has no MLflow 3 logged models, and its import
creates new runs every time (not idempotent) and ends them at import time (end times lost).
"""
from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import yaml

from ieskips.config import TrialConfig
from ieskips.errors import ConfigError

from ..sweep.identity import IDENTITY_TAG, complete
from ..sweep.lease import LEASE_TAG
from ..sweep.spec import SweepSpec, parse_spec
from .run_artifacts import MODEL_ARTIFACT, RESULTS_DIR, RESUME_ARTIFACT, _register
from .tracking import ROLE_TAG, SWEEP_TAG, find_parent_run, sweep_trial_runs

FORMAT, VERSION = "ieskips-results", 1
BUNDLE_FILE, SPEC_FILE, RUN_FILE, METRICS_FILE = "bundle.json", "sweep.yaml", "run.json", "metrics.csv"
IMPORTED_TAG, PARTIAL_TAG = "ieskips.imported_from", "ieskips.import_partial"
# Not carried as tags: the store's own bookkeeping (the name and parent are set on import; ours are re-made).
LOCAL_TAGS = (IMPORTED_TAG, PARTIAL_TAG, "mlflow.parentRunId", "mlflow.runName")
STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
METRIC_COLUMNS = ["key", "step", "timestamp", "value"]


def local_key(key: str) -> bool:
    """A param or tag that belongs to the store, not to the results: ours above, and the leases of the
    drivers and jobs that wrote into the run (``lease.py``: host, pid, heartbeats; all long expired)."""
    return key in LOCAL_TAGS or key == LEASE_TAG or key.startswith(LEASE_TAG + ".")


def origin(run) -> str:
    return run.data.tags.get(IMPORTED_TAG) or run.info.run_id


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- reading a bundle: everything checked before anything is written ------------------------------

@dataclass
class RunRecord:
    path: str  # its folder in the bundle
    info: dict  # run.json
    metrics: list = field(default_factory=list)  # (key, step, timestamp, value)
    artifacts: list = field(default_factory=list)  # (path in the run's artifacts, local file)
    config: TrialConfig | None = None  # the stored model's config, for its registration


@dataclass
class Bundle:
    folder: Path
    spec: SweepSpec
    parent: RunRecord | None
    runs: list


def read_bundle(folder: Path) -> Bundle:
    """The bundle at ``folder``, every file checked; ConfigError (one line) when it is not one or is damaged."""
    path = folder / BUNDLE_FILE
    if not path.is_file():
        raise ConfigError(f"{folder} is not a results bundle (no {BUNDLE_FILE}); "
                          "`ieskips results export SWEEP DIR` writes one")
    damaged = lambda what: ConfigError(f"results bundle {folder} is damaged: {what}")  # noqa: E731
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise damaged(f"{BUNDLE_FILE} is not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(f"{folder} is not a results bundle ({BUNDLE_FILE} is not an {FORMAT} manifest)")
    if not isinstance(manifest.get("version"), int) or manifest["version"] > VERSION:
        raise ConfigError(f"results bundle {folder} has format version {manifest.get('version')!r}; this ieskips "
                          f"reads up to {VERSION}: upgrade ieskips")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, str) and _safe(k) for k, v in files.items()):
        raise damaged(f"{BUNDLE_FILE} has no valid file list")
    for rel, digest in sorted(files.items()):
        local = folder / rel
        if not local.is_file():
            raise damaged(f"{rel} is missing")
        if sha256(local) != digest:
            raise damaged(f"{rel} does not match its sha256 (changed or truncated)")
    try:
        if SPEC_FILE not in files:
            raise ConfigError(f"{SPEC_FILE} is not in the file list")
        spec = parse_spec(yaml.safe_load((folder / SPEC_FILE).read_text()), SPEC_FILE)
        runs = [_read_run(folder, rel, files) for rel in manifest.get("runs", [])]
        parent = _read_run(folder, manifest["parent"], files) if manifest.get("parent") else None
    except ConfigError as err:
        raise damaged(err) from None
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as err:
        raise damaged(f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}") from None
    if (spec.name, spec.experiment) != (manifest.get("sweep"), manifest.get("experiment")):
        raise damaged(f"{SPEC_FILE} names sweep {spec.name!r} in experiment {spec.experiment!r}, {BUNDLE_FILE} "
                      f"{manifest.get('sweep')!r} in {manifest.get('experiment')!r}")
    return Bundle(folder, spec, parent, runs)


def _safe(rel) -> bool:
    """A relative path inside the bundle (no absolute path, no ``..``)."""
    path = PurePosixPath(rel) if isinstance(rel, str) else None
    return bool(path and rel and not path.is_absolute() and ".." not in path.parts and "\\" not in rel)


def _read_run(folder: Path, rel: str, files: dict) -> RunRecord:
    if not _safe(rel) or f"{rel}/{RUN_FILE}" not in files or f"{rel}/{METRICS_FILE}" not in files:
        raise ConfigError(f"run folder {rel!r} is not in the file list")
    info = json.loads((folder / rel / RUN_FILE).read_text())
    _check_record(info, rel)
    with open(folder / rel / METRICS_FILE, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != METRIC_COLUMNS:
            raise ConfigError(f"{rel}/{METRICS_FILE} has columns {reader.fieldnames}, not {METRIC_COLUMNS}")
        metrics = [(r["key"], int(r["step"]), int(r["timestamp"]), float(r["value"])) for r in reader]
    prefix = f"{rel}/artifacts/"
    artifacts = [(name.removeprefix(prefix), folder / name) for name in sorted(files) if name.startswith(prefix)]
    record = RunRecord(rel, info, metrics, artifacts)
    _check_artifacts(record)
    return record


def _check_record(info, rel: str) -> None:
    text = lambda v: isinstance(v, str)  # noqa: E731
    stamp = lambda v: v is None or isinstance(v, int)  # noqa: E731
    checks = {"id": text, "name": lambda v: v is None or text(v), "status": lambda v: v in STATUSES,
              "start_time": stamp, "end_time": stamp, "model_step": stamp,
              "params": lambda v: isinstance(v, dict) and all(map(text, v.values())),
              "tags": lambda v: isinstance(v, dict) and all(map(text, v.values())),
              "datasets": lambda v: isinstance(v, list) and all(isinstance(d, dict) for d in v)}
    bad = [key for key, ok in checks.items() if not isinstance(info, dict) or key not in info or not ok(info[key])]
    if bad:
        raise ConfigError(f"{rel}/{RUN_FILE}: missing or invalid {', '.join(bad)}")


def _check_artifacts(record: RunRecord) -> None:
    """The stored model and the resume point read (the model's config gives the logged model's), the
    per-example results merge."""
    from ieskips.evaluation import ExampleResults
    from ieskips.stored import read_model

    found = dict(record.artifacts)
    for name in (MODEL_ARTIFACT, RESUME_ARTIFACT):
        try:
            state = read_model(found[name]) if name in found else None
        except ConfigError as err:
            raise ConfigError(f"{record.path}/artifacts/{name}: {err}") from None
        if state is not None and name == MODEL_ARTIFACT:
            record.config = TrialConfig.from_dict(state["config"])
    results = [local for name, local in record.artifacts if name.startswith(f"{RESULTS_DIR}/")]
    try:
        ExampleResults.from_files(results)
    except (ValueError, KeyError, OSError) as err:
        raise ConfigError(f"{record.path}/artifacts/{RESULTS_DIR}: {str(err).splitlines()[0][:200]}") from None


# --- import --------------------------------------------------------------------------------------

def import_bundle(client, bundle: Bundle, experiment_id: str) -> dict:
    """Recreate the bundle's runs in ``experiment_id``; what already is there (same origin, or a complete
    run of the same identity) is skipped. A run an interrupted import left half-written is made again."""
    from ..sweep.budget import log_sweep_total

    name = bundle.spec.name
    there = sweep_trial_runs(client, experiment_id, name)
    for run in [r for r in there if r.data.tags.get(PARTIAL_TAG)]:
        client.delete_run(run.info.run_id)
        there.remove(run)
    origins = {origin(r) for r in there}
    idents = {}  # identity -> whether some run of it is complete
    for run in there:
        _seen(idents, run.data.tags.get(IDENTITY_TAG), complete(run))
    parent_id, parent_new = _parent(client, experiment_id, bundle)
    made = 0
    for record in bundle.runs:
        ident = record.info["tags"].get(IDENTITY_TAG)
        if record.info["id"] in origins or idents.get(ident) or (ident in idents and not _complete(record)):
            continue
        _import_run(client, experiment_id, record, parent_id)
        origins.add(record.info["id"])
        _seen(idents, ident, _complete(record))
        made += 1
    if made and not parent_new:  # the sweep's totals now count the imported runs too
        log_sweep_total(client, parent_id, sweep_trial_runs(client, experiment_id, name))
    return {"imported": made, "skipped": len(bundle.runs) - made, "parent_id": parent_id, "parent_new": parent_new}


def _seen(idents: dict, ident: str | None, done: bool) -> None:
    if ident:
        idents[ident] = idents.get(ident, False) or done


def _complete(record: RunRecord) -> bool:
    return complete(SimpleNamespace(info=SimpleNamespace(status=record.info["status"]),
                                    data=SimpleNamespace(tags=record.info["tags"])))


def _parent(client, experiment_id: str, bundle: Bundle) -> tuple[str, bool]:
    """The sweep's parent run in the store: found by the sweep's tag, else made from the bundle's."""
    name = bundle.spec.name
    found = find_parent_run(client, experiment_id, name)
    if found is not None and found.data.tags.get(PARTIAL_TAG):
        client.delete_run(found.info.run_id)
        found = None
    if found is not None:
        return found.info.run_id, False
    record = bundle.parent or RunRecord("parent", {
        "id": "", "name": name, "status": "FINISHED", "start_time": None, "end_time": None, "params": {},
        "tags": {SWEEP_TAG: name, ROLE_TAG: "sweep"}, "datasets": [], "model_step": None})
    return _import_run(client, experiment_id, record, None), True


def _import_run(client, experiment_id: str, record: RunRecord, parent_id: str | None) -> str:
    from mlflow.entities import Metric, Param

    info = record.info
    tags = {**info["tags"], PARTIAL_TAG: "true", **({IMPORTED_TAG: info["id"]} if info["id"] else {})}
    if parent_id:
        tags["mlflow.parentRunId"] = parent_id
    run_id = client.create_run(experiment_id, start_time=info["start_time"], tags=tags,
                               run_name=info["name"]).info.run_id
    params = [Param(k, v) for k, v in info["params"].items()]
    for i in range(0, len(params), 100):  # MLflow's limits per log_batch call
        client.log_batch(run_id, params=params[i:i + 100])
    metrics = [Metric(k, v, t, s) for k, s, t, v in record.metrics]
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    if info["datasets"]:
        client.log_inputs(run_id, datasets=[_dataset_input(d) for d in info["datasets"]])
    for name, local in record.artifacts:
        # Copied as they are (store_results would re-encode the .npz files: the same masks, other bytes).
        folder = str(PurePosixPath(name).parent)
        client.log_artifact(run_id, str(local), None if folder == "." else folder)
    if record.config is not None:
        step = info["model_step"] if info["model_step"] is not None else record.config.epochs
        _register(client, run_id, record.config, experiment_id, step)
    if info["status"] != "RUNNING":
        client.set_terminated(run_id, info["status"], end_time=info["end_time"])
    client.delete_tag(run_id, PARTIAL_TAG)  # last: a run still tagged is made again by the next import
    return run_id


def _dataset_input(given: dict):
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=given["name"], digest=given["digest"], source_type=given["source_type"],
                      source=given["source"], schema=given.get("schema"), profile=given.get("profile"))
    return DatasetInput(dataset, [InputTag(k, v) for k, v in given.get("tags", {}).items()])
