"""`ieskips report` on a store it can read but not write artifacts to: the files, one warning line, exit 0."""
import subprocess
import sys

import pytest

from .helpers import write_spec

pytestmark = pytest.mark.integration


def test_report_writes_its_files_and_warns_when_the_parent_run_refuses_them(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the artifact store should be a folder")
    client = MlflowClient(uri)
    experiment = client.create_experiment("ieskips-smoke", artifact_location=str(blocker / "artifacts"))
    spec = write_spec(tmp_path, tracking_uri=uri)
    parent = client.create_run(experiment, run_name="smoke", tags={"ieskips.sweep": "smoke", "ieskips.role": "sweep"})
    for k in (0, 1):
        for method in ("natural", "fgsm"):
            run = client.create_run(experiment, tags={"ieskips.sweep": "smoke", "ieskips.role": "trial",
                                                      "mlflow.parentRunId": parent.info.run_id})
            for key, value in {"ie_steps": k, "method": method, "seed": 0}.items():
                client.log_param(run.info.run_id, key, str(value))
            for metric in ("final/natural_acc", "final/robust_acc/fgsm", "final/robust_acc/pgd10",
                           "final/robust_acc/worst"):
                client.log_metric(run.info.run_id, metric, 0.5)
            client.set_terminated(run.info.run_id, "FINISHED")
    done = subprocess.run([sys.executable, "-m", "orchestration.cli", "report", str(spec), "--out", "reports"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=180, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and warnings[0].startswith("ieskips: warning: the report is in reports")
    assert parent.info.run_id in warnings[0]
    assert (tmp_path / "reports" / "smoke.md").read_text().count("50.00") >= 4
    assert not client.list_artifacts(parent.info.run_id)
