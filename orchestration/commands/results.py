"""``ieskips results export SWEEP DIR | import DIR``: a sweep's runs carried between tracking stores as a
folder of plain files (``results.py`` holds the format)."""
from __future__ import annotations

import json
from pathlib import Path

from ieskips.errors import ConfigError

from ..records.tracking import check_reachable, connect, resolve_tracking_uri


def main(args) -> int:
    return {"export": export, "import": import_}[args.results_command](args)


def export(args) -> int:
    from mlflow.tracking import MlflowClient

    from ..records.bundle_export import export_sweep
    from .sweep import sweep_spec

    spec = sweep_spec(args.sweep, args.smoke, args.storage)
    uri = resolve_tracking_uri(args.tracking_uri or spec.tracking_uri)
    check_reachable(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"sweep {spec.name!r}: there is no tracking store at {uri} (MLflow would create an "
                          "empty one); pass --tracking-uri where the sweep ran")
    try:
        done = export_sweep(MlflowClient(uri), spec, Path(args.dir))
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001  (mlflow raises many types for an unusable store)
        raise ConfigError(f"cannot export sweep {spec.name!r} from {uri}: {str(err).splitlines()[0][:200]}") from None
    parent = " and its parent run" if done["parent"] else " (no parent run)"
    print(f"sweep {spec.name}: {done['runs']} trial runs{parent} exported to {args.dir} "
          f"({done['files']} files, {done['bytes'] / 1e6:.3g} MB)")
    return 0


def import_(args) -> int:
    """Read and check the whole bundle, then write its runs into the store; then remember the sweep's
    spec under ``--storage`` so that commands given the sweep's name find it."""
    from mlflow.tracking import MlflowClient

    from ..records.bundle import import_bundle, read_bundle

    bundle = read_bundle(Path(args.dir))  # a bad bundle stops here: nothing written yet
    spec = bundle.spec
    uri = resolve_tracking_uri(args.tracking_uri or spec.tracking_uri)
    experiment_id = connect(uri, spec.experiment)
    done = import_bundle(MlflowClient(uri), bundle, experiment_id)
    parent = "created" if done["parent_new"] else "found"
    print(f"sweep {spec.name}: {done['imported']} trial runs imported into {uri} (experiment {spec.experiment!r}), "
          f"{done['skipped']} already there (skipped); parent run {done['parent_id']} {parent}")
    print(_remember(spec, uri, experiment_id, done["parent_id"], args.storage))
    return 0


def _remember(spec, uri: str, experiment_id: str, parent_id: str, storage: str | None) -> str:
    """Write the sweep's spec where ``report NAME``, ``evaluate --sweep NAME`` and ``sweep status NAME``
    look (``<storage>/<name>/``), unless a sweep of that name is already there (a sweep run here)."""
    from ..sweep.tuner import SPEC_FILE, STATE_FILE, sweep_dir

    where = sweep_dir(spec.name, storage)
    if "://" in where:
        return f"sweep {spec.name}: give the sweep file to commands (storage {where} is not a local folder)"
    folder = Path(where)
    if (folder / SPEC_FILE).is_file():
        return f"sweep {spec.name}: its state under {folder} is left as it was"
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    (folder / SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    # No launch: `sweep resume` has nothing to restore; `sweep run FILE` starts launches as usual.
    state = {"name": spec.name, "tracking_uri": uri, "experiment_id": experiment_id, "parent_id": parent_id,
             "launch": "", "imported": True}
    (folder / STATE_FILE).write_text(json.dumps(state, indent=1))
    return f"sweep {spec.name}: commands given its name find it (spec in {folder})"
