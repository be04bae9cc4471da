"""``ieskips demo`` and ``ieskips report``: a sweep's tables, and the demo that runs one and reports it."""
from __future__ import annotations

import sys
from pathlib import Path

from ieskips.errors import ConfigError

from ..records.tracking import resolve_tracking_uri

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"
DEMO_FILE, SMOKE_FILE = SWEEPS / "demo.yaml", SWEEPS / "smoke.yaml"


def demo_file() -> Path:
    """The demo's sweep: the miniature of Table 1 on real MNIST (fetched into the default root when
    absent); where no route to MNIST exists, one line saying so, and the digits smoke sweep."""
    from ieskips.data import default_root, mnist

    try:
        mnist.fetch(default_root(), progress=True)
    except ConfigError as err:
        print(f"ieskips demo: no MNIST here ({err}); running the digits smoke sweep ({SMOKE_FILE.name}) instead",
              file=sys.stderr, flush=True)
        return SMOKE_FILE
    return DEMO_FILE


def demo(args) -> int:
    """The product's main job on the embedded default: a miniature of Table 1 (vanilla vs IE-ResNet-1-18,
    natural training, real MNIST; ``sweeps/demo.yaml``), else the digits smoke sweep, on a local Ray with
    SQLite MLflow in this directory, then its report; prints the table (the paper's numbers beside ours),
    where the files are, and how to open the MLflow UI. Run again, it runs nothing new (every trial is
    complete) and reports again."""
    import argparse

    from . import sweep
    from ..reports.tables import write_report
    from ..sweep.spec import load_spec

    path = Path(args.spec) if args.spec else demo_file()
    if not path.is_file():
        raise ConfigError(f"sweep file {path} does not exist; pass --spec sweeps/demo.yaml from the repository")
    spec = load_spec(path)
    code = sweep.run(argparse.Namespace(spec=str(path), smoke=False, address=None, autoscaling=False))
    uri = resolve_tracking_uri(spec.tracking_uri)
    files = write_report(spec, uri, Path(args.out))
    print("\n" + files[0].read_text())
    print(f"report files: {', '.join(str(f) for f in files)}")
    mlflow = Path(sys.executable).parent / "mlflow"
    ui = f"{mlflow} ui --backend-store-uri {uri}" if uri.startswith("sqlite:") else f"open {uri}"
    print(f"runs: MLflow experiment {spec.experiment!r} at {uri}; to browse them: {ui} "
          "(then http://127.0.0.1:5000)")
    return code


def report(args) -> int:
    """The sweep's tables and figures: SWEEP is a sweep file or the name of a sweep that ran here."""
    from ..reports.tables import write_report
    from .sweep import sweep_spec

    spec = sweep_spec(args.sweep, args.smoke, args.storage, args.sets, args.local)
    uri = resolve_tracking_uri(args.tracking_uri or spec.tracking_uri)
    for path in write_report(spec, uri, Path(args.out)):
        print(path)
    return 0
