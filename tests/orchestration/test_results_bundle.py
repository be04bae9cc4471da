"""Results you can carry: a finished sweep exported to a bundle of plain files, imported into other
stores (idempotent, identities intact), then grown, evaluated and reported there; bad bundles refused.

One sweep runs for the whole file (``source``), imported once by the CLI (``imported``); the tests that
change the imported store only assert what holds in any order."""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from ieskips.errors import ConfigError
from orchestration.records.bundle import IMPORTED_TAG, PARTIAL_TAG, import_bundle, local_key, read_bundle, sha256
from orchestration.records.bundle_export import export_sweep

from .helpers import REPO, MlflowServer, cli, ray_env, runs, write_spec

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # one sweep for the file: ~2 min
EXPERIMENT, SMALL, GRID = "ieskips-smoke", {"epochs": 2}, {"ie_steps": [0, 1], "method": ["natural"]}


def finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _snapshot(uri: str, folder: Path) -> dict:
    """Everything a run holds, by origin id: info, params, tags, metric histories, the logged model,
    the stored model's bytes, the per-example results."""
    from orchestration.records.run_artifacts import MODEL_ARTIFACT, stored_results

    client, parents, trials = runs(uri, EXPERIMENT)
    out = {}
    for run in parents + trials:
        rid, data = run.info.run_id, run.data
        record = {"name": run.info.run_name, "status": run.info.status, "start": run.info.start_time,
                  "end": run.info.end_time, "params": {k: v for k, v in data.params.items() if not local_key(k)},
                  "tags": {k: v for k, v in data.tags.items() if not local_key(k)},
                  "metrics": {k: sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(rid, k))
                              for k in data.metrics},
                  "datasets": sorted((d.dataset.digest, d.dataset.profile) for d in run.inputs.dataset_inputs),
                  "outputs": [o.step for o in run.outputs.model_outputs]}
        if data.tags.get("ieskips.role") == "trial":
            record["weights"] = sha256(Path(client.download_artifacts(rid, MODEL_ARTIFACT, str(folder / rid))))
            results = stored_results(client, rid, folder / rid)
            record["per_example"] = (results.identity, results.indices.tolist(),
                                     {k: v.tolist() for k, v in results.masks.items()},
                                     {k: v.tolist() for k, v in results.covered.items()})
            models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{rid}'")
            record["models"] = [(m.name, str(m.status), m.tags["ieskips.weights"] == f"runs:/{rid}/{MODEL_ARTIFACT}")
                                for m in models]
        out[data.tags.get(IMPORTED_TAG, rid)] = record
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The smoke sweep's pipeline, small (2 trials, 2 epochs), run once and exported by the CLI."""
    folder = tmp_path_factory.mktemp("source")
    env, uri = ray_env(), f"sqlite:///{folder / 'mlflow.db'}"
    env["MLFLOW_TRACKING_URI"] = uri
    spec = write_spec(folder, name="carry", base=SMALL, grid=GRID)
    code, out = finish(cli("sweep", "run", str(spec), cwd=folder, env=env))
    assert code == 0, out[-3000:]
    code, out = finish(cli("results", "export", str(spec), str(folder / "bundle"), cwd=folder, env=env))
    assert code == 0 and "2 trial runs and its parent run exported" in out, out[-3000:]
    return SimpleNamespace(folder=folder, env=env, uri=uri, spec=spec, bundle=folder / "bundle",
                           snapshot=_snapshot(uri, folder / "snapshot"))


@pytest.fixture(scope="module")
def imported(source, tmp_path_factory):
    """The bundle imported by the CLI into an empty SQLite store; its state right after, and its export."""
    folder = tmp_path_factory.mktemp("imported")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    code, out = finish(cli("results", "import", str(source.bundle), "--tracking-uri", uri, cwd=folder,
                           env=source.env))
    assert code == 0 and "2 trial runs imported" in out and "0 already there" in out, out[-3000:]
    from mlflow.tracking import MlflowClient

    snapshot = _snapshot(uri, folder / "snapshot")
    export_sweep(MlflowClient(uri), read_bundle(source.bundle).spec, folder / "again")
    _, parents, trials = runs(uri, EXPERIMENT)
    return SimpleNamespace(folder=folder, uri=uri, snapshot=snapshot, again=folder / "again",
                           parent_id=parents[0].info.run_id, trials={r.info.run_id: r for r in trials},
                           env={**source.env, "MLFLOW_TRACKING_URI": uri})


def _files(bundle: Path) -> dict:
    return json.loads((bundle / "bundle.json").read_text())["files"]


def test_import_recreates_every_run_and_a_second_import_creates_nothing(source, imported):
    assert imported.snapshot == source.snapshot  # params, tags, histories, datasets, models, per-example results
    assert len(imported.snapshot) == 3 and all(r["models"] == [("preact_resnet18", "READY", True)]
                                               for r in imported.snapshot.values() if "models" in r)
    for run in imported.trials.values():
        assert run.data.tags["mlflow.parentRunId"] == imported.parent_id and IMPORTED_TAG in run.data.tags
    assert _files(imported.again) == _files(source.bundle)  # export(import(bundle)) == bundle, byte for byte

    code, out = finish(cli("results", "import", str(source.bundle), cwd=imported.folder, env=imported.env))
    assert code == 0 and "0 trial runs imported" in out and "2 already there (skipped)" in out, out[-3000:]
    _, parents, trials = runs(imported.uri, EXPERIMENT)
    assert len(parents) == 1 and {r.info.run_id for r in trials} >= set(imported.trials)
    assert len(trials) == len({r.data.tags["ieskips.identity"] for r in trials})  # one run per identity

    from orchestration.reports.tables import write_report
    from orchestration.commands.sweep import sweep_spec

    spec = sweep_spec("carry", False, str(imported.folder / "ray_results"))  # the name works after an import
    assert spec == read_bundle(source.bundle).spec
    mine = write_report(spec, source.uri, source.folder / "report", log_to_parent=False)[0].read_text()
    theirs = write_report(spec, imported.uri, imported.folder / "report", log_to_parent=False)[0].read_text()
    natural = next(line for line in theirs.splitlines() if line.startswith("| ResNet-18 natural |"))
    assert theirs == mine and "missing" not in natural  # (the FGSM-AT rows are not in this small grid)


def test_sweep_run_on_the_imported_store_runs_only_the_missing_trials(source, imported):
    code, out = finish(cli("sweep", "run", str(source.spec), cwd=imported.folder, env=imported.env))
    assert code == 0 and "2 trials in the file; 2 complete (skipped), 0 to run" in out, out[-3000:]
    grown = write_spec(imported.folder, name="carry", base=SMALL, grid={**GRID, "seed": [0, 1]})
    code, out = finish(cli("sweep", "run", str(grown), cwd=imported.folder, env=imported.env))
    assert code == 0 and "4 trials in the file; 2 complete (skipped), 2 to run" in out, out[-3000:]
    _, parents, trials = runs(imported.uri, EXPERIMENT)
    assert len(parents) == 1 and parents[0].info.run_id == imported.parent_id
    assert len(trials) == 4 == len({r.data.tags["ieskips.identity"] for r in trials})
    new = [r for r in trials if r.info.run_id not in imported.trials]
    assert sorted(r.info.run_name for r in new) == ["preact_resnet18-K0-natural-s1", "preact_resnet18-K1-natural-s1"]
    assert all(r.data.tags["mlflow.parentRunId"] == imported.parent_id and r.info.status == "FINISHED" for r in new)
    for run in trials:
        if run.info.run_id in imported.trials:  # untouched: same run, same end
            assert run.info.end_time == imported.trials[run.info.run_id].info.end_time


def test_evaluate_by_name_attacks_the_imported_models_and_writes_back(imported):
    from mlflow.tracking import MlflowClient

    from orchestration.records.run_artifacts import stored_labels

    attack = "{name: fgsm, eps: 0.05, label: fgsm005}"
    code, out = finish(cli("evaluate", "--sweep", "carry", "--attack", attack, cwd=imported.folder, env=imported.env))
    assert code == 0 and "evaluated, 0 failed" in out, out[-3000:]
    client = MlflowClient(imported.uri)
    for run_id, before in imported.trials.items():
        run = client.get_run(run_id)
        assert 0 <= run.data.metrics["final/robust_acc/fgsm005"] <= 1 and "fgsm005" in stored_labels(client, run_id)
        assert (run.info.status, run.info.end_time) == (before.info.status, before.info.end_time)


def _damaged(source, tmp_path, change) -> Path:
    copy = Path(shutil.copytree(source.bundle, tmp_path / f"copy{len(list(tmp_path.iterdir()))}"))
    change(copy, json.loads((copy / "bundle.json").read_text()))
    return copy


def _rehash(copy: Path, manifest: dict, rel: str) -> None:
    """A file changed and its hash updated too: the parse checks, not the hash, must catch it."""
    manifest["files"][rel] = sha256(copy / rel)
    (copy / "bundle.json").write_text(json.dumps(manifest))


def _first(manifest: dict, suffix: str) -> str:
    return next(rel for rel in sorted(manifest["files"]) if rel.endswith(suffix))


def test_a_folder_that_is_no_bundle_or_a_damaged_one_is_one_line_and_exit_2(source, imported, tmp_path, capsys,
                                                                            monkeypatch):
    from orchestration.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    missing = _damaged(source, tmp_path, lambda c, m: (c / _first(m, ".npz")).unlink())
    _, _, before = runs(imported.uri, EXPERIMENT)
    fresh = tmp_path / "fresh.db"
    for folder, uri, message in ((tmp_path / "empty", f"sqlite:///{fresh}", "is not a results bundle"),
                                 (missing, imported.uri, ".npz is missing")):
        assert main(["results", "import", str(folder), "--tracking-uri", uri]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("ieskips: error: ") and message in err, err
    assert not fresh.exists() and not (tmp_path / "mlruns").exists()  # nothing written, not even a store
    _, _, after = runs(imported.uri, EXPERIMENT)
    assert len(after) == len(before)

    def flip(copy, manifest):
        path = copy / _first(manifest, "weights.pt")
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 1
        path.write_bytes(bytes(data))

    def bad_json(copy, manifest):
        rel = _first(manifest, "run.json")
        (copy / rel).write_text((copy / rel).read_text()[:-20])
        _rehash(copy, manifest, rel)

    def bad_metrics(copy, manifest):
        rel = _first(manifest, "metrics.csv")
        (copy / rel).write_text("key,step,timestamp,value\nloss,one,2,3\n")
        _rehash(copy, manifest, rel)

    def outside(copy, manifest):
        manifest["files"]["../elsewhere.json"] = "0" * 64
        (copy / "bundle.json").write_text(json.dumps(manifest))

    def newer(copy, manifest):
        (copy / "bundle.json").write_text(json.dumps({**manifest, "version": 99}))

    cases = {flip: "does not match its sha256", bad_json: "damaged: JSONDecodeError", bad_metrics: "damaged: ValueError",
             outside: "no valid file list", newer: "format version 99",
             (lambda c, m: (c / "bundle.json").write_text("{")): "bundle.json is not valid JSON"}
    for change, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            read_bundle(_damaged(source, tmp_path, change))


def test_export_of_a_sweep_with_no_runs_or_into_another_sweeps_bundle_is_refused(source, tmp_path, capsys,
                                                                                   monkeypatch):
    from mlflow.tracking import MlflowClient

    from orchestration.cli import main

    monkeypatch.chdir(tmp_path)
    smoke = str(REPO / "sweeps" / "smoke.yaml")
    assert main(["results", "export", smoke, "b", "--smoke", "--tracking-uri", "sqlite:///none.db"]) == 2
    assert capsys.readouterr().err == ("ieskips: error: sweep 'smoke-smoke': there is no tracking store at "
                                       "sqlite:///none.db (MLflow would create an empty one); pass --tracking-uri "
                                       "where the sweep ran\n")
    assert main(["results", "export", smoke, "b", "--smoke", "--tracking-uri", source.uri]) == 2
    assert capsys.readouterr().err.startswith("ieskips: error: sweep 'smoke-smoke' has no runs in experiment")
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "b").exists()
    other = Path(shutil.copytree(source.bundle, tmp_path / "other"))
    manifest = json.loads((other / "bundle.json").read_text())
    (other / "bundle.json").write_text(json.dumps({**manifest, "sweep": "other"}))
    with pytest.raises(ConfigError, match="holds the bundle of sweep 'other'; export 'carry' to another folder"):
        export_sweep(MlflowClient(source.uri), read_bundle(source.bundle).spec, other)


def test_a_run_an_interrupted_import_left_half_written_is_made_again(source, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from orchestration.records.tracking import connect

    monkeypatch.chdir(tmp_path)  # the SQLite store's artifacts go to ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, bundle = MlflowClient(uri), read_bundle(source.bundle)
    experiment_id = connect(uri, EXPERIMENT)
    import_bundle(client, bundle, experiment_id)
    _, _, first = runs(uri, EXPERIMENT)
    client.set_tag(first[0].info.run_id, PARTIAL_TAG, "true")  # as if that import had stopped midway
    done = import_bundle(client, bundle, experiment_id)
    assert (done["imported"], done["skipped"]) == (1, 1)
    _, parents, second = runs(uri, EXPERIMENT)
    assert len(parents) == 1 and len(second) == 2 and first[0].info.run_id not in {r.info.run_id for r in second}
    assert client.get_run(first[0].info.run_id).info.lifecycle_stage == "deleted"


@pytest.mark.e2e
def test_a_bundle_goes_through_an_mlflow_server_unchanged(source, tmp_path):
    from mlflow.tracking import MlflowClient

    from orchestration.records.tracking import connect

    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server")
    try:
        client, bundle = MlflowClient(server.uri), read_bundle(source.bundle)
        done = import_bundle(client, bundle, connect(server.uri, EXPERIMENT))
        assert (done["imported"], done["skipped"], done["parent_new"]) == (2, 0, True)
        again = import_bundle(client, bundle, connect(server.uri, EXPERIMENT))
        assert (again["imported"], again["skipped"], again["parent_new"]) == (0, 2, False)
        export_sweep(client, bundle.spec, tmp_path / "again")
    finally:
        server.stop()
    assert _files(tmp_path / "again") == _files(source.bundle)
