"""Golden test: fixed runs in a temporary MLflow store -> exactly the expected table, gaps and a figure."""
import math

import pandas as pd
import pytest

from orchestration.reports.tables import write_report
from orchestration.sweep.spec import parse_spec

pytestmark = pytest.mark.unit

SPEC = {
    "name": "golden", "experiment": "golden-exp", "grid": {"ie_steps": [0, 1, 2, 3, 5], "seed": [0, 1, 2]},
    "report": {
        "title": "Table 1: MNIST, natural training, FGSM 0.15",
        "rows": [
            {"label": "ResNet-18", "match": {"ie_steps": 0}, "published": [99.41, 88.45]},
            {"label": "IE-ResNet-1-18", "match": {"ie_steps": 1}, "published": [99.32, 91.36], "baseline": "ResNet-18"},
            {"label": "IE-ResNet-3-18", "match": {"ie_steps": 3}, "published": [99.38, 92.27], "baseline": "ResNet-18"},
            {"label": "IE-ResNet-5-18", "match": {"ie_steps": 5}},
            {"label": "IE-ResNet-2-18", "match": {"ie_steps": 2}},
        ],
        "columns": [{"label": "Natural Acc (%)", "metric": "final/natural_acc"},
                    {"label": "Robust Acc (%)", "metric": "final/robust_acc/fgsm"}],
    },
}
# (ie_steps, seed, status, natural, fgsm, worst)
RUNS = [(0, 0, "FINISHED", .90, .50, .40), (0, 1, "FINISHED", .92, .52, .42), (0, 2, "FINISHED", .94, .54, .44),
        (1, 0, "FINISHED", .91, .55, .45), (1, 1, "FINISHED", .93, .59, .47), (1, 2, "FAILED", None, None, None),
        (3, 0, "FAILED", None, None, None), (2, 0, "RUNNING", None, None, None), (2, 1, "KILLED", None, None, None)]


@pytest.fixture
def store(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'golden.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("golden-exp")
    parent = client.create_run(exp, tags={"ieskips.sweep": "golden", "ieskips.role": "sweep"}).info.run_id
    client.set_terminated(parent, "FINISHED")
    for i, (k, seed, status, natural, fgsm, worst) in enumerate(RUNS):
        run = client.create_run(exp, tags={"ieskips.sweep": "golden", "ieskips.role": "trial",
                                           "ieskips.trial_id": f"t{i}", "mlflow.parentRunId": parent}).info.run_id
        client.log_param(run, "ie_steps", str(k))
        client.log_param(run, "seed", str(seed))
        for name, value in (("final/natural_acc", natural), ("final/robust_acc/fgsm", fgsm),
                            ("final/robust_acc/worst", worst)):
            if value is not None:
                client.log_metric(run, name, value, step=2)
        if status != "RUNNING":
            client.set_terminated(run, status)
    return uri, client, parent


def test_golden_table(store, tmp_path):
    uri, client, parent = store
    files = write_report(parse_spec(SPEC), uri, tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "golden.csv", index_col=0, keep_default_na=False)
    expected = pd.DataFrame({
        "Natural Acc (%) ours": ["92.00 ± 2.00 (n=3)", "92.00 ± 1.41 (n=2)", "failed", "missing", "unfinished"],
        "Natural Acc (%) paper": ["99.41", "99.32", "99.38", "—", "—"],
        "Natural Acc (%) Δ": ["-7.41", "-7.32", "—", "—", "—"],
        "Robust Acc (%) ours": ["52.00 ± 2.00 (n=3)", "57.00 ± 2.83 (n=2)", "failed", "missing", "unfinished"],
        "Robust Acc (%) paper": ["88.45", "91.36", "92.27", "—", "—"],
        "Robust Acc (%) Δ": ["-36.45", "-34.36", "—", "—", "—"],
        "Worst case, all attacks (%) ours": ["42.00 ± 2.00 (n=3)", "46.00 ± 1.41 (n=2)", "failed", "missing", "unfinished"],
    }, index=pd.Index(["ResNet-18", "IE-ResNet-1-18", "IE-ResNet-3-18", "IE-ResNet-5-18",
                    "IE-ResNet-2-18"], name="Model"))  # 2: one run running, one stopped before its end
    pd.testing.assert_frame_equal(table, expected)

    provenance = pd.read_csv(tmp_path / "out" / "golden_provenance.csv", keep_default_na=False)
    cell = provenance[(provenance["row"] == "IE-ResNet-1-18") & (provenance["column"] == "Robust Acc (%)")].iloc[0]
    assert len(cell["run_ids"].split()) == 2 and cell["n"] == 2

    gaps = pd.read_csv(tmp_path / "out" / "golden_gaps.csv")
    fgsm = gaps[(gaps["row"] == "IE-ResNet-1-18") & (gaps["column"] == "Robust Acc (%)")].iloc[0]
    assert fgsm["n"] == 2 and fgsm["gap"] == pytest.approx(6.0)
    assert fgsm["ci95_low"] == pytest.approx(6.0 - 12.7062, abs=1e-3)
    assert math.isnan(gaps[gaps["row"] == "IE-ResNet-3-18"]["gap"].iloc[0])

    assert "\\begin{tabular}" in (tmp_path / "out" / "golden.tex").read_text()
    assert "| IE-ResNet-5-18 | missing |" in (tmp_path / "out" / "golden.md").read_text()
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert {f"report/{f.name}" for f in files} == logged
    assert client.get_run(parent).info.status == "FINISHED"


def test_golden_figure(store, tmp_path):
    uri, _, _ = store
    spec = parse_spec({**SPEC, "report": {**SPEC["report"], "kind": "figure", "x": "ie_steps",
                                          "rows": [{"label": "IE-ResNet", "match": {}}]}})
    files = write_report(spec, uri, tmp_path / "fig", log_to_parent=False)
    png = tmp_path / "fig" / "golden.png"
    assert png in files and png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"
