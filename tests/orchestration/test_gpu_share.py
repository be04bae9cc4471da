"""Fractional GPUs on a Ray that declares one logical GPU (no GPU needed): four 0.25-GPU trials run at
once, a 1-GPU trial runs alone, and each trial holds itself to its share of the device's memory."""
import pytest
import torch

from ieskips.training import cap_gpu_memory

from .helpers import ray_env, runs, write_spec

pytestmark = pytest.mark.integration


def test_a_fractional_trial_caps_its_cuda_memory_to_its_share(monkeypatch):
    capped = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda share, device: capped.append(share))
    assert cap_gpu_memory(0.25) and capped == [0.25]
    assert not cap_gpu_memory(1) and not cap_gpu_memory(0) and capped == [0.25]  # whole or no GPU: no cap


def overlapping(trials) -> int:
    """The most trial runs that were running at one moment."""
    events = sorted([(r.info.start_time, 1) for r in trials] + [(r.info.end_time, -1) for r in trials])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@pytest.fixture
def logical_gpu(monkeypatch, tmp_path):
    import ray

    for key, value in ray_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield tmp_path
    ray.shutdown()


def test_four_quarter_gpu_trials_share_one_gpu_and_a_whole_gpu_trial_runs_alone(logical_gpu):
    from orchestration.cli import main

    grid = {"ie_steps": [0, 1], "method": ["natural", "fgsm"]}
    small = {"epochs": 2, "train_subset": 512, "device": "cpu"}
    quarter = write_spec(logical_gpu, name="quarter", base=small, grid=grid, max_concurrent=4,
                         resources={"cpu": 0.5, "gpu": 0.25})
    whole = write_spec(logical_gpu, name="whole", base=small, grid={"ie_steps": [0, 1], "method": ["natural"]},
                       max_concurrent=4, resources={"cpu": 0.5, "gpu": 1})
    assert main(["sweep", "run", str(quarter)]) == 0
    assert main(["sweep", "run", str(whole)]) == 0
    _, _, trials = runs(f"sqlite:///{logical_gpu / 'mlflow.db'}", "ieskips-smoke")
    by_sweep = {name: [r for r in trials if r.data.tags["ieskips.sweep"] == name] for name in ("quarter", "whole")}
    assert len(by_sweep["quarter"]) == 4 and len(by_sweep["whole"]) == 2
    assert overlapping(by_sweep["quarter"]) == 4
    assert overlapping(by_sweep["whole"]) == 1
