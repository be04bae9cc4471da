"""Every sweep file runs in smoke mode end to end, and its report is regenerated from the real runs.

The sweeps share one working directory (one MLflow store), in file order, as a campaign would: Table 4
resolves its transfer oracles from the runs of Table 3's smoke sweep."""
import pandas as pd
import pytest

from orchestration.sweep.spec import load_spec, smoke_spec

from .helpers import REPO, cli, ray_env, runs

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    """One folder and one single-node Ray (2 CPUs) for every file's sweep: each `sweep run` joins it
    (`--address`) instead of starting a Ray of its own, which costs as much as a smoke trial."""
    from ray.cluster_utils import Cluster

    env = ray_env()
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 2})
        try:
            yield tmp_path_factory.mktemp("campaign"), env, cluster.address
        finally:
            cluster.shutdown()


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_smoke_run_and_report(path, campaign):
    tmp_path, env, address = campaign
    proc = cli("sweep", "run", str(path), "--smoke", "--address", address, cwd=tmp_path, env=env)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    spec = smoke_spec(load_spec(path))
    client, parents, trials = runs(f"sqlite:///{tmp_path / 'mlflow.db'}", spec.experiment)
    parents, trials = ([r for r in found if r.data.tags["ieskips.sweep"] == spec.name] for found in (parents, trials))
    assert len(trials) == len(spec.trial_configs()) and all(r.info.status == "FINISHED" for r in trials)

    proc = cli("report", str(path), "--smoke", "--out", "reports", cwd=tmp_path, env=env)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    table = pd.read_csv(tmp_path / "reports" / f"{spec.name}.csv", index_col=0, keep_default_na=False)
    labels = [row.label for row in spec.report.rows]
    assert all(any(i == label or i.startswith(f"{label}, ") for i in table.index) for label in labels)
    first = table[f"{spec.report.columns[0].label} ours"]
    assert first.str.contains(r"\(n=1\)").all(), first  # one seed per row (or per x): none missing
    logged = {a.path for a in client.list_artifacts(parents[0].info.run_id, "report")}
    assert f"report/{spec.name}.md" in logged and f"report/{spec.name}_provenance.csv" in logged
    if spec.name == "table4-smoke":
        check_oracles_from_table3(client, trials)
    if spec.report.kind == "figure":
        assert (tmp_path / "reports" / f"{spec.name}.png").stat().st_size > 5000


def check_oracles_from_table3(client, trials):
    """Each Table 4 trial attacked with FGSM from Table 3's ResNet-50 of its own seed, by run id."""
    _, _, table3 = runs(client.tracking_uri, "ieskips-paper")
    oracles = {(r.data.params["ie_steps"], r.data.params["seed"]): r.info.run_id for r in table3
               if r.data.tags.get("ieskips.sweep") == "table3-smoke" and r.data.params["model"] == "preact_resnet50"}
    for run in trials:
        seed = run.data.params["seed"]
        assert run.data.tags["ieskips.oracle.from_resnet50"] == oracles[("0", seed)]
        assert run.data.tags["ieskips.oracle.from_ie_resnet1_50"] == oracles[("1", seed)]
        assert "final/robust_acc/from_resnet50" in run.data.metrics
