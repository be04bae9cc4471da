"""A paper sweep on the machine at hand: --set (dotted keys into the file) and --local, identities kept."""
import json

import pytest

from ieskips.errors import ConfigError
from orchestration.sweep.identity import IDENTITY_TAG, identity, trial_config
from orchestration.commands.overrides import OVERRIDES_TAG, adapt, local_profile, parse_sets
from orchestration.sweep.spec import load_spec, smoke_spec

from .helpers import REPO, cli, ray_env, runs

TABLE1 = REPO / "sweeps" / "table1.yaml"


def identities(spec) -> list[str]:
    return [identity(trial_config(dict(spec.base), p)) for p in spec.grid_points()]


@pytest.mark.unit
def test_place_only_overrides_keep_every_identity_and_say_nothing_changed_them():
    spec = load_spec(TABLE1)
    adapted = adapt(spec, ["base.data_dir=./data", "resources.gpu=0", "resources.cpu=1", "storage_path=./ray_results",
                           "max_concurrent=2", "tracking_uri=sqlite:///x.db", "base.device=cpu"])
    assert adapted.spec.base["data_dir"] == "./data" and adapted.spec.resources.gpu == 0
    assert adapted.spec.storage_path == "./ray_results" and adapted.spec.max_concurrent == 2
    assert identities(adapted.spec) == identities(spec) and adapted.identity_keys == ()
    assert "change" not in adapted.summary()


@pytest.mark.unit
def test_an_identity_changing_override_is_allowed_and_named():
    spec = load_spec(TABLE1)
    adapted = adapt(spec, ["base.epochs=2", "max_concurrent=1", "grid.seed=[0]"])
    assert adapted.identity_keys == ("base.epochs", "grid.seed")
    assert identities(adapted.spec) != identities(spec) and len(adapted.spec.grid_points()) == 3
    assert "base.epochs, grid.seed change the trials' identities" in adapted.summary()


@pytest.mark.unit
def test_local_profile_fits_the_machine_and_keeps_identities():
    spec = load_spec(TABLE1)
    profile = local_profile(spec, cores=2, gpus=0)
    assert profile["resources"] == {"cpu": 1, "gpu": 0} and profile["max_concurrent"] == 2
    assert profile["storage_path"] is None and profile["base.data_dir"] is None
    adapted = adapt(spec, local=True)
    assert "data_dir" not in adapted.spec.base and adapted.spec.storage_path is None and not adapted.spec.storage_shared
    assert adapted.spec.resources.cpu <= 2 and identities(adapted.spec) == identities(spec)
    assert local_profile(spec, cores=16, gpus=1)["resources"] == {"cpu": 1, "gpu": 0.25}


@pytest.mark.unit
@pytest.mark.parametrize("pair, message", [
    ("resources.gpu", "KEY=VALUE"), ("=3", "KEY=VALUE"), ("base..lr=1", "KEY=VALUE"),
    ("resources.gpu=-1", "resources.gpu"), ("base.no_such_key=1", "no_such_key"), ("colour=red", "colour"),
    ("max_concurrent=many", "max_concurrent"), ("name.x=1", "not a section"), ("base.lr=[1", "not a YAML value"),
])
def test_a_bad_key_or_value_is_one_config_error(pair, message):
    with pytest.raises(ConfigError, match=message) as err:
        adapt(load_spec(TABLE1), [pair])
    assert "\n" not in str(err.value)


@pytest.mark.unit
def test_sets_are_read_as_yaml():
    assert parse_sets(["grid.seed=[0, 1]", "resources.gpu=0.5", "base.data_dir=./d"]) == {
        "grid.seed": [0, 1], "resources.gpu": 0.5, "base.data_dir": "./d"}


@pytest.mark.integration
def test_a_paper_files_smoke_sweep_run_with_local_and_set(tmp_path):
    """The smoke sweep of Table 1 run here with --local and place-only --set: its runs carry the same
    identities as the file's smoke sweep, and the parent run records the overrides; a bad key exits 2
    before anything is started or written."""
    env = ray_env()
    bad = cli("sweep", "run", str(TABLE1), "--smoke", "--local", "--set", "resources.gpus=1", cwd=tmp_path, env=env)
    out, _ = bad.communicate(timeout=300)
    assert bad.returncode == 2 and out.strip().count("\n") == 0 and "resources.gpus" in out
    assert list(tmp_path.iterdir()) == []
    proc = cli("sweep", "run", str(TABLE1), "--smoke", "--local", "--set", f"storage_path={tmp_path / 'tune'}",
               "--set", "max_concurrent=2", cwd=tmp_path, env=env)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    assert "overrides" in out and "change the trials' identities" not in out
    _, parents, trials = runs(f"sqlite:///{tmp_path / 'mlflow.db'}", "ieskips-paper")
    expected = identities(smoke_spec(load_spec(TABLE1)))
    assert sorted(r.data.tags[IDENTITY_TAG] for r in trials) == sorted(expected)
    recorded = json.loads(parents[0].data.tags[OVERRIDES_TAG])
    assert recorded["max_concurrent"] == 2 and recorded["storage_path"] == str(tmp_path / "tune")
    assert (tmp_path / "tune" / "table1-smoke").is_dir()
