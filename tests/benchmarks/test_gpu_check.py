"""benchmarks/gpu_check.py, the GPU check, in its CPU form: every section runs and none crashes, with Ray,
MLflow and Optuna made unimportable, as on the GPU machine (so the script cannot rot while no GPU is at hand)."""
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
BLOCKED = ("ray", "mlflow", "optuna")


def load_runner():
    spec = importlib.util.spec_from_file_location("gpu_check_runner", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def blockers(folder: Path) -> Path:
    """Packages named ray, mlflow and optuna whose import fails: first on PYTHONPATH, they hide the real ones."""
    for name in BLOCKED:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked: none on the GPU machine')\n")
    return folder


@pytest.mark.unit
def test_wheels_are_unpacked_for_missing_modules_only_and_for_this_python(tmp_path, monkeypatch):
    runner = load_runner()
    wheels = tmp_path / "carry" / "wheels"
    wheels.mkdir(parents=True)
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    for name, module in (("tqdm-9.9-py3-none-any.whl", "tqdm"),
                         (f"pyyaml-9.9-{tag}-{tag}-manylinux2014_x86_64.whl", "yaml"),
                         ("pyyaml-9.9-cp39-cp39-manylinux2014_x86_64.whl", "yaml_for_another_python")):
        with zipfile.ZipFile(wheels / name, "w") as wheel:
            wheel.writestr(f"{module}/__init__.py", "")
    monkeypatch.setattr(runner, "WHEELS", {"pydantic": ("pydantic",), "yaml": ("pyyaml",), "tqdm": ("tqdm",),
                                           "surely_not_installed_here": ("pyyaml",)})
    done = runner.unpack_wheels(tmp_path / "carry", tmp_path / "site")
    assert done == [f"pyyaml-9.9-{tag}-{tag}-manylinux2014_x86_64.whl"]  # pydantic, yaml, tqdm are installed here
    assert (tmp_path / "site" / "yaml").is_dir() and not (tmp_path / "site" / "yaml_for_another_python").exists()


@pytest.mark.unit
@pytest.mark.slow
def test_the_cpu_form_runs_every_section_without_ray_or_mlflow(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(blockers(tmp_path / "blocked")), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--out", str(out), "--carry", str(tmp_path / "none")],
                          env=env, capture_output=True, text=True, timeout=1200)
    report = json.loads((out / "gpu_check.json").read_text())
    sections = report["sections"]
    assert list(sections) == [name for name, *_ in load_runner().SECTIONS], done.stdout + done.stderr
    crashed = {name: s.get("error") for name, s in sections.items() if s["status"] in ("crashed", "skipped")}
    assert not crashed, (crashed, (out / "gpu_check.log").read_text()[-3000:])
    assert sections["env"]["figures"]["importable"] == {name: False for name in BLOCKED}  # the blockers took
    assert sections["tests"]["figures"]["tests"] > 0 and (out / "tests.xml").exists()
    assert {t["name"] for t in report["targets"]} == set(load_runner_targets())
    assert all(t["verdict"] in ("n/a on CPU", "not measured") for t in report["targets"])
    assert sections["table1"]["figures"]["final"]["final/natural_acc"] > 0
    assert sections["packing"]["figures"]["packing"]["errors"] == []
    assert (out / "gpu_check.log").stat().st_size > 0 and len(list(out.iterdir())) <= 8  # what the device tool returns


def load_runner_targets():
    """gpu_throughput.py's targets: the check reports every one beside its measured number."""
    path = REPO / "benchmarks" / "gpu_throughput.py"
    spec = importlib.util.spec_from_file_location("gpu_throughput_for_targets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TARGETS
