"""The fastest CPU path for ``--local``: trials at once against threads per trial, channels_last and
torch.compile, for Table 1's models, measured in one run (issue 19).

The models are exactly Table 1's trials (``sweeps/table1.yaml``'s base through ``model_for``: PreAct
ResNet-18 width 8, GroupNorm, MNIST-shaped 1x28x28 inputs, batch 128) with ie_steps 0, 1 and 3. The
unit of work is a natural training step (forward + backward + SGD step) on a fixed random batch, and
for the evaluation path one batch of FGSM or PGD-20 (the file's specs) scored by a forward.

1. Layouts ``PxT`` (P processes at once, T threads each) on this machine's C cores: 1x1, 1xC, Cx1,
   the ones between, and CxC (trials at once with torch's default threads: oversubscribed). Each
   process is a spawned worker at a fixed thread count; a layout's images/s is the sum over its
   processes' images over the wall time from the first start to the last end; images per CPU-second
   (process time) beside it, a proxy for a quiet machine.
2. channels_last on/off (model and batch), at the threads per trial chosen in 1.
3. FGSM and PGD-20 examples/s on the same layouts as 1 (a trial's final evaluation).
4. torch.compile (mode default and max-autotune-no-cudagraphs; reduce-overhead is CUDA graphs, which
   CPU tensors skip) of the model, each in a fresh process with an empty inductor cache: the first
   step's time is the compile time, then eager and compiled steps interleaved for the steady state.
   The unrolled mode (double backward) is tried with backend aot_eager (inductor's own AOT autograd,
   without code generation) and recorded as unsupported with its one-line reason.

--quick: shorter budgets, no CxC layout, attack batches of 16, and section 4 only checks the
unrolled mode (a cold compile takes minutes per model here).

The machine is shared: every comparison is interleaved (A B A B ...) and medians are reported; the
load average is printed at the start and the end. JSON: benchmarks/results/cpu_paths[_quick].json.

The units of work are in cpu_paths_work.py, section 4 in cpu_paths_compile.py.

    python benchmarks/cpu_paths.py [--quick] [--rounds 7] [--compile-budget 330] [--sections 1234]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import time
from pathlib import Path

import torch

from ieskips.config import TrialConfig

from cpu_paths_compile import measure_compile
from cpu_paths_work import MODELS, SWEEP, Workers, round_robin, table1_config

TRAIN_IMAGES, TEST_IMAGES = 60000, 10000  # MNIST; the trial trains on 60000 - val_size
GAIN = 1.05  # below a 5% gain a switch is noise on this machine, not a reason
ATTACK_BATCH = {"full": 32, "quick": 16}  # a PGD-20 unit a loaded machine finishes in seconds (the loader's: 128)
# Seconds per section (1 layouts, 2 channels_last, 3 evaluation, 4 compile): rounds go on while the
# next fits; the first always runs, so a heavily loaded machine overruns them.
BUDGETS = {"full": (120, 45, 100, 330), "quick": (80, 15, 60, 60)}


# --- sections 1-3: layouts and channels_last, in the spawned workers of cpu_paths_work.py -------------

def layouts(cores: int, oversubscribed: bool) -> list[tuple[int, int]]:
    between = [(cores // t, t) for t in range(2, cores) if cores % t == 0]
    out = [(1, 1), (1, cores), (cores, 1), *between]
    return out + [(cores, cores)] * oversubscribed if cores > 1 else [(1, 1)]


def measure_layouts(workers, cores, tasks, max_rounds, budget_s, oversubscribed, attack_batch=32):
    runs = {}
    for m in MODELS:
        for task in tasks:
            key = (m, task) if task == "train" else (m, task, False, attack_batch)  # make_work's arguments
            for lay in layouts(cores, oversubscribed and task == "train"):
                runs[(m, task, lay)] = lambda k=key, lay=lay: workers.burst(lay, k)
    got = round_robin(runs, max_rounds, budget_s)
    return {f"{m}/{t}/{p}x{th}": v for (m, t, (p, th)), v in got.items()}


def measure_channels_last(workers, threads, max_rounds, budget_s):
    runs = {(m, cl): (lambda k=(m, "train", cl): workers.burst((1, threads), k))
            for m in MODELS for cl in (False, True)}
    got = round_robin(runs, max_rounds, budget_s)
    return {f"{m}/{'channels_last' if cl else 'contiguous'}": v for (m, cl), v in got.items()}


# --- choices from the numbers ------------------------------------------------------------------------

def geomean(values) -> float:
    values = list(values)
    return statistics.geometric_mean(values) if values else float("nan")


def choose_layout(lay: dict, task: str, cores: int, metric: str = "ips") -> tuple[int, int]:
    """Of the layouts that use every core, the one whose images/s over the three models (geometric
    mean) is highest; 1x1 is only the reference."""
    cands = {tuple(map(int, k.split("/")[2].split("x"))) for k in lay if k.split("/")[1] == task}
    score = lambda c: geomean(lay[f"{m}/{task}/{c[0]}x{c[1]}"][metric] for m in MODELS)  # noqa: E731
    return max(sorted(c for c in cands if c[0] * c[1] >= cores), key=score)


def choose_channels_last(cl: dict) -> tuple[str, float]:
    ratio = geomean(cl[f"{m}/channels_last"]["ips"] / cl[f"{m}/contiguous"]["ips"] for m in MODELS)
    return ("on" if ratio >= GAIN else "off"), ratio


def choose_compile(comp: dict, train_s: dict) -> tuple[str, str]:
    """Yes where each detached Table 1 model measured gains GAIN and repays its (cold) compile time
    within one trial's training (``train_s``: eager seconds per model); a model that does not compile
    is a no; one not measured (budget) is named."""
    verdicts, missing = [], []
    for model in MODELS:
        r = comp.get(f"{model}/default", {"status": "skipped", "reason": "not run (--quick)"})
        if r["status"] in ("skipped", "timeout"):
            missing.append(f"{model} {r['status']}")
        elif r["status"] != "ok":
            return "no", f"{model}: {r['status']} ({r['reason']})"
        else:
            verdicts.append((model, r["speedup"], train_s[model] * (1 - 1 / r["speedup"]) - r["compile_s"]))
    unrolled = [k.split("/")[0] for k, r in comp.items() if "_unrolled" in k and r["status"] == "unsupported"]
    note = f"; {', '.join(unrolled)}: unsupported (double backward)" if unrolled else ""
    if not verdicts:
        return "not measured", ", ".join(missing) + " (run the full mode or --sections 4)" + note
    detail = ", ".join(f"{m} {s:.2f}x, saves {v / 60:+.1f} min/trial" for m, s, v in verdicts)
    good = all(s >= GAIN and v > 0 for _, s, v in verdicts)
    return ("yes" if good else "no"), detail + "".join(f"; {m}" for m in missing) + note


def eval_share(lay: dict, train_lay: tuple, eval_lay: tuple, epochs: int, train_images: int) -> dict:
    """Per trial: minutes of training (epochs) and of a final FGSM + PGD-20 on the test set."""
    out = {}
    for m in MODELS:
        p, t = train_lay
        train = p * epochs * train_images / lay[f"{m}/train/{p}x{t}"]["ips"]
        p, t = eval_lay
        final = sum(p * TEST_IMAGES / lay[f"{m}/{a}/{p}x{t}"]["ips"] for a in ("fgsm", "pgd20"))
        out[m] = {"train_min": train / 60, "final_fgsm_pgd20_min": final / 60, "eval_share": final / (train + final)}
    return out


# --- output ------------------------------------------------------------------------------------------

def print_layouts(lay: dict, tasks, cores):
    """Images/s (wall clock, all processes) and, after the bar, images per CPU-second (a proxy for a
    quiet machine: time the scheduler gave to others does not count)."""
    heads = "".join(f"{p}x{t:<6}" for p, t in layouts(cores, True))
    print(f"{'':<15}{heads}| {heads}  (images/s | images per CPU-s; P processes x T threads)")
    for m in MODELS:
        for task in tasks:
            row = [lay.get(f"{m}/{task}/{p}x{t}") for p, t in layouts(cores, True)]
            print(f"{m + '/' + task:<15}{_cells(row, 'ips')}| {_cells(row, 'ips_cpu')}")


def _cells(row: list, key: str) -> str:
    """Width-8 cells; two decimals below 10 (PGD-20 under load runs at a fraction of an example/s)."""
    return "".join(f"{r[key]:<8.{0 if r[key] >= 10 else 2}f}" if r else f"{'-':<8}" for r in row)


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="shorter budgets, no oversubscribed layout, attack batch 16, section 4 only checks the "
                             "unrolled mode (~4 min)")
    parser.add_argument("--rounds", type=int, default=7, help="most interleaved rounds per section")
    parser.add_argument("--compile-budget", type=float, help="seconds for section 4 (default 330, quick 60)")
    parser.add_argument("--sections", default="1234", help="which sections to run, e.g. 4 (compile only)")
    parser.add_argument("--threads", type=int, default=1, help="threads per trial when section 1 is not run")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the finally blocks stop what we started
    budgets = list(BUDGETS["quick" if args.quick else "full"])
    budgets[3] = args.compile_budget or budgets[3]
    cores, config, began = len(os.sched_getaffinity(0)), table1_config(0), time.monotonic()
    batch = ATTACK_BATCH["quick" if args.quick else "full"]
    out = {"quick": args.quick, "max_rounds": args.rounds, "budgets_s": budgets, "cores": cores,
           "cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "batch": config.batch_size,
           "attack_batch": batch, "sweep": SWEEP.name, "load_start": os.getloadavg(),
           "note": "shared machine: other processes ran concurrently; medians of interleaved rounds"}
    print(f"cpu_paths: Table 1 models on {cores} cores, torch {torch.__version__}, train batch {config.batch_size}, "
          f"attack batch {batch}; {load()} at start.\nThe machine is shared (other jobs run beside this "
          f"one): comparisons are interleaved, medians of up to {args.rounds} rounds.", flush=True)
    if os.getloadavg()[0] > 2 * cores:
        print(f"warning: load {os.getloadavg()[0]:.0f} on {cores} cores: a section's first round (always run) can "
              "overrun its budget, the 2-thread layouts most", flush=True)
    if set(args.sections) & set("123"):
        run_worker_sections(args, out, budgets, cores)
    layout = out.get("choice_train_layout", (cores // args.threads, args.threads))
    if "4" in args.sections:
        print(f"\n4. torch.compile at {layout[1]} thread(s), train step (fresh process and inductor cache per "
              f"case; budget {budgets[3]:.0f} s; {load()})", flush=True)
        mark, out["compile"] = time.monotonic(), {}
        measure_compile(out["compile"], layout[1], budgets[3], args.quick, lambda: save(out, args))
        out.setdefault("section_s", {})["4"] = time.monotonic() - mark
    out["choice"] = choose(out, cores, config)
    out["load_end"], out["seconds"] = os.getloadavg(), time.monotonic() - began
    print_choice(out, cores)
    save(out, args)


def save(out: dict, args) -> None:
    """The JSON so far: written after every section, so that a run stopped midway keeps what it measured."""
    dest = Path(__file__).with_name("results")
    dest.mkdir(exist_ok=True)
    name = "cpu_paths" + ("_quick" if args.quick else "") + ("" if args.sections == "1234" else f"_s{args.sections}")
    (dest / f"{name}.json").write_text(json.dumps(out, indent=1, default=str))


def run_worker_sections(args, out, budgets, cores):
    workers, mark = Workers(), time.monotonic()
    try:
        if "1" in args.sections:
            print(f"\n1. training step: processes x threads ({load()})", flush=True)
            out["layouts"] = measure_layouts(workers, cores, ("train",), args.rounds, budgets[0], not args.quick)
            print_layouts(out["layouts"], ("train",), cores)
            mark = _section_done(out, args, "1", mark, _rounds(out["layouts"]))
            out["choice_train_layout"] = choose_layout(out["layouts"], "train", cores)
            out["choice_train_layout_by_cpu_time"] = choose_layout(out["layouts"], "train", cores, "ips_cpu")
        threads = out.get("choice_train_layout", (0, args.threads))[1]
        if "2" in args.sections:
            print(f"\n2. channels_last at {threads} thread(s) per trial (train step, images/s; {load()})", flush=True)
            out["channels_last"] = measure_channels_last(workers, threads, args.rounds, budgets[1])
            for m in MODELS:
                off, on = (out["channels_last"][f"{m}/{f}"]["ips"] for f in ("contiguous", "channels_last"))
                print(f"  {m:<8} contiguous {off:6.0f}  channels_last {on:6.0f}  ({on / off:.2f}x)")
            mark = _section_done(out, args, "2", mark, _rounds(out["channels_last"]))
        if "3" in args.sections:
            batch = ATTACK_BATCH["quick" if args.quick else "full"]
            print(f"\n3. evaluation path: FGSM and PGD-20, batches of {batch} (examples/s; {load()})", flush=True)
            got = measure_layouts(workers, cores, ("fgsm", "pgd20"), args.rounds, budgets[2], False, batch)
            out["layouts"] = out.get("layouts", {}) | got
            print_layouts(got, ("fgsm", "pgd20"), cores)
            _section_done(out, args, "3", mark, _rounds(got))
    finally:
        workers.close()


def _section_done(out: dict, args, section: str, mark: float, rounds: int) -> float:
    now = time.monotonic()
    out.setdefault("section_s", {})[section] = now - mark
    print(f"  ({rounds} round{'s' * (rounds > 1)}, {now - mark:.0f} s)", flush=True)
    save(out, args)
    return now


def _rounds(measured: dict) -> int:
    return len(next(iter(measured.values()))["samples"])


def choose(out: dict, cores: int, config: TrialConfig) -> dict:
    """The choices the measured sections support (see the choose_* functions)."""
    epochs, train_images, lay, choice = config.epochs, TRAIN_IMAGES - config.val_size, out.get("layouts", {}), {}
    if "choice_train_layout" in out:
        p, t = out["choice_train_layout"]
        choice["trials_at_once"], choice["threads_per_trial"] = p, t
    if any(k.split("/")[1] == "pgd20" for k in lay):
        choice["eval_layout"] = choose_layout(lay, "pgd20", cores)
    if "eval_layout" in choice and "trials_at_once" in choice:
        out["eval_share"] = eval_share(lay, (p, t), choice["eval_layout"], epochs, train_images)
    if "channels_last" in out:
        choice["channels_last"], choice["channels_last_ratio"] = choose_channels_last(out["channels_last"])
    if "compile" in out:  # a trial's speed: its layout's share, else (section 4 alone) the eager steady state
        speed = ({m: lay[f"{m}/train/{p}x{t}"]["ips"] / p for m in MODELS} if "trials_at_once" in choice else
                 {m: out["compile"].get(f"{m}/default", {}).get("eager_ips", float("inf")) for m in MODELS})
        train_s = {m: epochs * train_images / v for m, v in speed.items()}
        choice["compile"], choice["compile_why"] = choose_compile(out["compile"], train_s)
    return choice


def print_choice(out: dict, cores: int):
    c, lay, parts = out["choice"], out.get("layouts", {}), []
    if "trials_at_once" in c:
        ratio = lambda m, task: lay[f"{m}/{task}/{cores}x1"]["ips"] / lay[f"{m}/{task}/1x{cores}"]["ips"]  # noqa: E731
        for task in [k for k in ("train", "fgsm", "pgd20") if f"vanilla/{k}/1x{cores}" in lay]:
            print(f"\n{task}: {cores} processes x 1 thread over 1 x {cores} threads (images/s): "
                  + ", ".join(f"{m} {ratio(m, task):.2f}x" for m in MODELS))
        by_cpu = out["choice_train_layout_by_cpu_time"]
        parts.append(f"--local should run {c['trials_at_once']} trials x {c['threads_per_trial']} thread(s) "
                     f"on this machine (by CPU time, as on a quiet machine: {by_cpu[0]} x {by_cpu[1]})")
    for m, s in out.get("eval_share", {}).items():
        print(f"  {m:<8} per trial at {c['trials_at_once']}x{c['threads_per_trial']}, at this run's speed: training "
              f"{s['train_min']:5.0f} min, a final FGSM + PGD-20 on the {TEST_IMAGES} test images "
              f"{s['final_fgsm_pgd20_min']:5.0f} min ({100 * s['eval_share']:.0f}% of the two)")
    if "eval_layout" in c:
        parts.append(f"evaluation at {c['eval_layout'][0]}x{c['eval_layout'][1]}")
    if "channels_last" in c:
        parts.append(f"channels_last: {c['channels_last']} ({c['channels_last_ratio']:.2f}x)")
    if "compile" in c:
        parts.append(f"compile: {c['compile']} ({c['compile_why']})")
    print("\nchoice: " + "; ".join(parts))
    print(f"{load()} at end; {out['seconds']:.0f} s in all.")


if __name__ == "__main__":
    main()
