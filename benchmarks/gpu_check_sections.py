"""The sections of ``gpu_check.py``, each run in its own process: ``python gpu_check.py --section NAME``.

A section keeps its figures in ``ctx.figures`` as it goes, so that when it crashes or is interrupted at its
time limit (SIGINT from the runner) what it measured is still written to ``WORK/NAME.json``.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# The tests that put models and tensors on IESKIPS_TEST_DEVICE (tests/device.py); none imports Ray or MLflow.
GPU_TESTS = ("tests/models/test_precision.py", "tests/training/test_device_loader.py", "tests/models/test_ie_skip.py",
             "tests/training/test_trainer.py", "tests/attacks/test_attacks.py", "tests/attacks/test_audit.py",
             "tests/attacks/test_adaptive.py")
CPU_TESTS = GPU_TESTS[1:3]  # the CPU form proves the plumbing (the quick ones); CI runs them all anyway
BLOCKED = ("ray", "mlflow", "optuna")  # what the GPU machine lacks, so what nothing here may need


@dataclass
class Context:
    device: torch.device
    cpu: bool
    until: float  # time.time() by which the section is to have written its result (the runner's clock)
    work: Path
    carry: Path
    reference: bool = False  # --cpu-reference: the Table 1 trial's epoch 1 at full scale on this CPU
    figures: dict = field(default_factory=dict)

    def left(self) -> float:
        return self.until - time.time()


def run(name: str, args) -> int:
    from gpu_check_table1 import table1, table1_cpu  # noqa: PLC0415

    sections = {"env": env, "tests": tests, "throughput": throughput, "packing": packing, "table1": table1,
                "table1_cpu": table1_cpu}
    ctx = Context(torch.device("cpu" if args.cpu else "cuda"), args.cpu, args.until, args.work, args.carry,
                  reference=args.cpu_reference)
    try:
        status, error = sections[name](ctx), ""
    except KeyboardInterrupt:
        status, error = "crashed", "interrupted at its time limit"
    except BaseException as err:  # noqa: BLE001  (the runner must learn what broke; then the next section runs)
        status, error = "crashed", f"{type(err).__name__}: {err}"[:500]
        traceback.print_exc()
    if isinstance(status, tuple):  # (status, why it failed)
        status, error = status
    result = {"status": status, "error": error, "figures": ctx.figures}
    (args.work / f"{name}.json").write_text(json.dumps(result, indent=1, default=str))
    print(f"section {name}: {status} {error}", flush=True)
    return 0


def importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except Exception:  # noqa: BLE001  (ImportError, or a blocker's own error)
        return False


def version(module: str):
    try:
        return getattr(__import__(module), "__version__", "present")
    except Exception:  # noqa: BLE001
        return None


def env(ctx: Context):
    """What the machine is, what it holds, and that ieskips imports there without Ray or MLflow."""
    f = ctx.figures
    f.update(python=sys.version.split()[0], torch=torch.__version__, cuda_build=torch.version.cuda,
             cuda_available=torch.cuda.is_available(), cpu_count=os.cpu_count(), torch_threads=torch.get_num_threads())
    if f["cuda_available"]:
        props = torch.cuda.get_device_properties(0)
        f.update(device_name=props.name, capability=f"{props.major}.{props.minor}",
                 memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count,
                 cudnn=torch.backends.cudnn.version(), bf16_supported=torch.cuda.is_bf16_supported())
    f["packages"] = {m: version(m) for m in ("torchvision", "numpy", "sklearn", "pytest", "pydantic", "yaml", "tqdm",
                                             "pyautoattack")}
    f["importable"] = {m: importable(m) for m in BLOCKED}
    import ieskips.attacks  # noqa: F401, PLC0415
    import ieskips.evaluation  # noqa: F401, PLC0415
    import ieskips.training  # noqa: F401, PLC0415

    f["ieskips_imports"] = True
    if not ctx.cpu and not f["cuda_available"]:
        return "failed", "torch sees no CUDA device"
    return "passed"


def tests(ctx: Context):
    """The tests with a CUDA path, in this process, on IESKIPS_TEST_DEVICE (the runner sets it)."""
    import pytest  # noqa: PLC0415

    os.environ["IESKIPS_TEST_DEVICE"] = str(ctx.device)
    junit = ctx.work / "tests.xml"
    files = CPU_TESTS if ctx.cpu else GPU_TESTS
    ctx.figures.update(device=str(ctx.device), files=list(files))
    code = pytest.main(["-q", "-p", "no:cacheprovider", "-o", "junit_family=xunit2", f"--junitxml={junit}",
                        "--durations=10", *files])
    ctx.figures.update(exit_code=int(code), **junit_counts(junit))
    if int(code) == 0:
        return "passed"
    return "failed", f"pytest exit code {int(code)}: {len(ctx.figures.get('failed', []))} failed"


def junit_counts(path: Path) -> dict:
    import xml.etree.ElementTree as ET  # noqa: PLC0415

    if not path.exists():
        return {}
    cases = list(ET.parse(path).getroot().iter("testcase"))
    failed = [(f"{c.get('classname')}::{c.get('name')}", (bad.get("message") or "")[:300])
              for c in cases for bad in c if bad.tag in ("failure", "error")]
    skipped = sum(1 for c in cases for s in c if s.tag == "skipped")
    return {"tests": len(cases), "failed": failed, "skipped": skipped,
            "seconds": round(sum(float(c.get("time") or 0) for c in cases), 1)}


def throughput_plan(widths) -> list[tuple]:
    """(width, variant, bf16, channels_last, norm): first the rows the targets need, then the rest."""
    small, large = widths
    first = [(small, "vanilla", False, False), (small, "ie1_detached", False, False),
             (small, "ie1_unrolled", False, False), (small, "vanilla", True, False), (large, "vanilla", False, False)]
    rest = [(w, v, bf16, cl) for w in widths for v in ("vanilla", "ie1_detached", "ie1_unrolled")
            for bf16 in (False, True) for cl in (False, True)]
    rows = [(*r, "group") for r in first + [r for r in rest if r not in first]]
    return rows + [(small, v, False, cl, "batch") for v in ("vanilla", "ie1_detached") for cl in (False, True)]


def throughput(ctx: Context):
    """gpu_throughput.py's PGD-10 steps at the sizes its GPU targets name, row by row within the budget."""
    import gpu_throughput as gt  # noqa: PLC0415

    size = gt.sizes(ctx.device)
    repeats = 1 if ctx.cpu else 5
    rows, skipped = ctx.figures.setdefault("steps", []), ctx.figures.setdefault("skipped", [])
    ctx.figures.update(sizes=size, repeats=repeats, method="pgd (the targets' method)")
    needed = 5  # the rows the targets need come first and always run; then the loading share (against the
    # vanilla step), then the rest while the budget lasts (on the CPU one more: a channels_last twin)
    plan = throughput_plan(size["widths"])
    for index, (width, variant, bf16, cl, norm) in enumerate(plan[:needed + 1] if ctx.cpu else plan):
        if index == needed:
            loading(ctx, gt, size, rows)
        row = {"width": width, "variant": variant, "bf16": bf16, "channels_last": cl, "norm": norm}
        if index >= needed and ctx.left() < 1.5 * estimate(rows, width, variant) * (repeats + 2) + 3:
            skipped.append(row)
            continue
        try:
            seconds = gt.step_seconds(width, variant, "pgd", ctx.device, size["batch"], bf16=bf16, channels_last=cl,
                                      norm=norm, repeats=repeats)
            row.update(seconds=seconds, images_per_sec=size["batch"] / seconds)
        except Exception as err:  # noqa: BLE001  (one combination failing on the GPU is a finding, not the end)
            row["error"] = f"{type(err).__name__}: {err}"[:300]
        rows.append(row)
        print(f"  {row}", flush=True)
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
    ctx.figures["channels_last_speedup"] = speedups = channels_last_speedups(rows)
    ctx.figures["channels_last_advice"] = advice(speedups)
    ctx.figures["targets"] = throughput_targets(ctx, gt, rows)
    errors = [r for r in rows if "error" in r]
    return ("failed", f"{len(errors)} step(s) raised") if errors else "passed"


def estimate(rows, width, variant) -> float:
    """Seconds a step of this kind will take: its fp32 twin's where measured, else the slowest yet."""
    twin = find(rows, width=width, variant=variant, bf16=False, channels_last=False, norm="group")
    if twin and "seconds" in twin:
        return twin["seconds"]
    return max((r.get("seconds", 0) for r in rows), default=0)


def loading(ctx, gt, size, rows) -> None:
    step = find(rows, width=size["widths"][0], variant="vanilla", bf16=False, channels_last=False, norm="group")
    if step and "seconds" in step:
        ctx.figures["loading_share"] = gt.loading_share(ctx.device, size, step["seconds"])


def find(rows, **where):
    return next((r for r in rows if all(r.get(k) == v for k, v in where.items())), None)


def channels_last_speedups(rows) -> dict:
    """Seconds without channels_last over seconds with it, per (width, variant, precision, norm)."""
    out = {}
    for r in rows:
        twin = find(rows, width=r["width"], variant=r["variant"], bf16=r["bf16"], norm=r["norm"], channels_last=True)
        if not r["channels_last"] and twin and "seconds" in r and "seconds" in twin:
            out[f"w{r['width']} {r['variant']} {'bf16' if r['bf16'] else 'fp32'} {r['norm']}norm"] = \
                r["seconds"] / twin["seconds"]
    return out


def advice(speedups: dict) -> str:
    """What the numbers say for TrialConfig.channels_last's default (the trials' GroupNorm models)."""
    group = sorted(v for k, v in speedups.items() if k.endswith("groupnorm"))
    if not group:
        return "not measured"
    median = group[len(group) // 2]
    verdict = "on" if median > 1.05 else "off" if median < 0.97 else "either (no difference)"
    return f"{verdict}: median speed-up {median:.2f} over {len(group)} GroupNorm step(s)"


def target_row(gt, ctx, name, value) -> dict:
    op, bound = gt.TARGETS[name]
    return {"name": name, "op": op, "bound": bound, "measured": value, "verdict": gt.verdict_of(value, (op, bound),
                                                                                            ctx.device)}


def throughput_targets(ctx, gt, rows) -> list[dict]:
    small, large = gt.sizes(ctx.device)["widths"]
    base = dict(bf16=False, channels_last=False, norm="group")

    def seconds(width=small, variant="vanilla", **kw):
        row = find(rows, width=width, variant=variant, **{**base, **kw})
        return row.get("seconds") if row else None

    def ratio(a, b):
        return a / b if a and b else None

    vanilla = seconds()
    wide = seconds(large)
    share = ctx.figures.get("loading_share", {}).get("device_loader")
    detached, unrolled = seconds(variant="ie1_detached"), seconds(variant="ie1_unrolled")
    return [target_row(gt, ctx, "ie1_detached PGD-10 / vanilla (time)", ratio(detached, vanilla)),
            target_row(gt, ctx, "ie1_unrolled PGD-10 / vanilla (time)", ratio(unrolled, vanilla)),
            target_row(gt, ctx, "bf16 / fp32 vanilla PGD-10 (speed)", ratio(vanilla, seconds(bf16=True))),
            target_row(gt, ctx, "data loading share of a step", share),
            target_row(gt, ctx, gt.WIDE, gt.sizes(ctx.device)["batch"] / wide if wide else None)]


def packing(ctx: Context):
    """The memory cap a fractional trial sets (does it hold?), then four capped trials against one alone."""
    import multiprocessing as mp  # noqa: PLC0415

    import gpu_throughput as gt  # noqa: PLC0415

    size = gt.sizes(ctx.device)
    if ctx.device.type == "cuda":
        with mp.get_context("spawn").Pool(1) as pool:
            ctx.figures["cap_probe"] = pool.apply(cap_probe, (0.25,))
    seconds = 1.5 if ctx.cpu else 10.0  # per round (one alone, four packed), after each worker's start
    ctx.figures["packing"] = packed = gt.packing(ctx.device, size, seconds)
    ctx.figures["targets"] = [target_row(gt, ctx, "four packed / one alone (aggregate)", packed["ratio"])]
    probe = ctx.figures.get("cap_probe", {"enforced": True})
    if packed["errors"]:
        return "failed", "; ".join(packed["errors"])[:300]
    return "passed" if probe["enforced"] else ("failed", "the 0.25 cap let a larger allocation through")


def cap_probe(share: float) -> dict:
    """Under ``cap_gpu_memory(share)`` an allocation above the share must fail and one below it succeed."""
    from ieskips.training import cap_gpu_memory  # noqa: PLC0415

    capped = cap_gpu_memory(share)
    total = torch.cuda.get_device_properties(0).total_memory
    out = {"capped": capped, "share": share, "total_gib": round(total / 2**30, 1)}
    try:
        torch.empty(int((share + 0.05) * total), dtype=torch.uint8, device="cuda")
        out["above_share"] = "allocated"
    except torch.cuda.OutOfMemoryError:
        out["above_share"] = "out of memory (as it should)"
    torch.cuda.empty_cache()
    below = torch.empty(int((share - 0.05) * total), dtype=torch.uint8, device="cuda")
    out["below_share"] = f"allocated {below.numel() / 2**30:.1f} GiB"
    out["enforced"] = out["above_share"] != "allocated"
    return out
