"""The fastest CPU path for ``--local``: trials at once against threads per trial, channels_last and
torch.compile, for Table 1's models, measured in one run (issue 19).

The models are exactly Table 1's trials (``sweeps/table1.yaml``'s base through ``model_for``: PreAct
ResNet-18 width 8, GroupNorm, MNIST-shaped 1x28x28 inputs, batch 128) with ie_steps 0, 1 and 3. The
unit of work is a natural training step (forward + backward + SGD step) on a fixed random batch, and
for the evaluation path one batch of FGSM or PGD-20 (the file's specs) scored by a forward.

1. Layouts ``PxT`` (P processes at once, T threads each) on this machine's C cores: 1x1, 1xC, Cx1,
   the ones between, and CxC (trials at once with torch's default threads: oversubscribed). Each
   process is a spawned worker; a layout's images/s is the sum over its processes' images over the
   wall time from the first start to the last end. images per CPU-second beside it (process time).
2. channels_last on/off (model and batch), at the threads per trial chosen in 1.
3. FGSM and PGD-20 examples/s on the same layouts as 1 (a trial's final evaluation).
4. torch.compile (mode default and max-autotune-no-cudagraphs; reduce-overhead is CUDA graphs, which
   CPU tensors skip) of the model, each in a fresh process with an empty inductor cache: the first
   step's time is the compile time, then eager and compiled steps interleaved for the steady state.
   The unrolled mode (double backward) is tried too and recorded as unsupported with its reason.

The machine is shared: every comparison is interleaved (A B A B ...) and medians are reported; the
load average is printed at the start and the end. JSON: benchmarks/results/cpu_paths[_quick].json.

    python benchmarks/cpu_paths.py [--quick] [--rounds 7] [--compile-budget 330]
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from ieskips.attacks import build_attack
from ieskips.config import TrialConfig
from ieskips.training import model_for

SWEEP = Path(__file__).resolve().parents[1] / "sweeps" / "table1.yaml"
MODELS = {"vanilla": 0, "ie1": 1, "ie3": 3}  # Table 1's rows: ie_steps
TRAIN_IMAGES, TEST_IMAGES = 60000, 10000  # MNIST; the trial trains on 60000 - val_size
CTX = multiprocessing.get_context("spawn")
GAIN = 1.05  # below a 5% gain a switch is noise on this machine, not a reason


def table1_config(ie_steps: int, inner_grad: str | None = None) -> TrialConfig:
    base = yaml.safe_load(SWEEP.read_text())["base"]
    return TrialConfig.from_dict({**base, "ie_steps": ie_steps, **({"inner_grad": inner_grad} if inner_grad else {})})


def attack_spec(config: TrialConfig, task: str) -> dict:
    """The file's own FGSM and (model-gradient) PGD-20 specs."""
    want = {"fgsm": ("fgsm", None), "pgd20": ("pgd", 20)}[task]
    return next(s for s in config.eval_attacks if (s["name"], s.get("steps")) == want and "inner_grad" not in s)


def make_work(model: str, task: str, channels_last=False, inner_grad=None, compile_mode=None):
    """A callable doing one unit (a train step or one attacked batch); returns the images it did."""
    config = table1_config(MODELS[model], inner_grad)
    torch.manual_seed(0)
    net = model_for(config)
    x, y = torch.rand(config.batch_size, 1, 28, 28), torch.randint(0, 10, (config.batch_size,))
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if compile_mode:
        net = torch.compile(net, **({} if compile_mode == "default" else {"mode": compile_mode}))
    if task == "train":
        net.train()

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(x), y).backward()
            opt.step()
            return len(y)
        return step
    net.eval()
    attack = build_attack(attack_spec(config, task))

    def attacked():
        adv = attack(net, x, y)
        with torch.no_grad():
            net(adv).argmax(1)  # scored as the evaluation does
        return len(y)
    return attacked


# --- layouts: persistent spawned workers, driven in lock step ---------------------------------------

def _worker(conn):
    works, warm = {}, set()
    while (msg := conn.recv()) is not None:
        key, threads, units = msg
        torch.set_num_threads(threads)
        work = works.get(key) or works.setdefault(key, make_work(*key))
        if (key, threads) not in warm:  # first use at this thread count: not timed
            work()
            warm.add((key, threads))
        conn.send("ready")
        conn.recv()
        cpu, start = time.process_time(), time.monotonic()  # monotonic: one clock for all processes
        images = sum(work() for _ in range(units))
        conn.send((start, time.monotonic(), time.process_time() - cpu, images))


class Workers:
    def __init__(self, count: int):
        self.conns, self.procs = [], []
        for _ in range(count):
            parent, child = CTX.Pipe()
            proc = CTX.Process(target=_worker, args=(child,), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)

    def burst(self, layout: tuple[int, int], key: tuple, units: int) -> dict:
        """``units`` of ``key`` in each of ``layout[0]`` workers at ``layout[1]`` threads, started together."""
        conns = self.conns[:layout[0]]
        for c in conns:
            c.send((key, layout[1], units))
        for c in conns:
            c.recv()
        for c in conns:
            c.send("go")
        done = [c.recv() for c in conns]
        wall = max(d[1] for d in done) - min(d[0] for d in done)
        images = sum(d[3] for d in done)
        return {"ips": images / wall, "ips_cpu": images / max(sum(d[2] for d in done), 1e-9)}

    def close(self):
        for c, p in zip(self.conns, self.procs):
            c.send(None)
            p.join(timeout=30)


def layouts(cores: int, oversubscribed: bool) -> list[tuple[int, int]]:
    between = [(cores // t, t) for t in range(2, cores) if cores % t == 0]
    out = [(1, 1), (1, cores), (cores, 1), *between]
    return out + [(cores, cores)] * oversubscribed if cores > 1 else [(1, 1)]


def round_robin(runs: dict, rounds: int) -> dict:
    """runs: {name: fn() -> {metric: value}}; rounds of one call each; median of each metric."""
    samples = {name: [] for name in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            samples[name].append(fn())
    return {name: {m: statistics.median(s[m] for s in got) for m in got[0]} | {"samples": got}
            for name, got in samples.items()}


def measure_layouts(workers, cores, tasks, rounds, units, oversubscribed):
    runs = {}
    for model in MODELS:
        for task in tasks:
            for lay in layouts(cores, oversubscribed and task == "train"):
                runs[(model, task, lay)] = (lambda k=(model, task), lay=lay, u=units[task]:
                                            workers.burst(lay, k, u))
    got = round_robin(runs, rounds)
    return {f"{m}/{t}/{p}x{th}": v for (m, t, (p, th)), v in got.items()}


def measure_channels_last(workers, threads, rounds, units):
    runs = {(m, cl): (lambda k=(m, "train", cl): workers.burst((1, threads), k, units))
            for m in MODELS for cl in (False, True)}
    got = round_robin(runs, rounds)
    return {f"{m}/{'channels_last' if cl else 'contiguous'}": v for (m, cl), v in got.items()}


# --- torch.compile: one fresh process per case, empty inductor cache ---------------------------------

def _compile_case(model, inner_grad, mode, threads, rounds, units, queue):
    logging.getLogger("torch").setLevel(logging.ERROR)
    torch.set_num_threads(threads)
    eager, compiled = make_work(model, "train", False, inner_grad), make_work(model, "train", False, inner_grad, mode)
    start = time.perf_counter()
    try:
        compiled()
    except Exception as err:  # noqa: BLE001 -- an unsupported mode is a result, not a crash
        reason = f"{type(err).__name__}: " + next((ln for ln in str(err).splitlines() if ln.strip()), "")
        queue.put({"status": "unsupported", "reason": reason[:240], "seconds_to_error": time.perf_counter() - start})
        return
    result = {"status": "ok", "compile_s": time.perf_counter() - start}
    eager(), compiled()  # second calls: any recompilation after the first optimizer step happens here
    counters = torch._dynamo.utils.counters
    result.update(graph_breaks=sum(counters["graph_break"].values()), graphs=counters["stats"]["unique_graphs"])
    timed = lambda fn: (lambda: _timed(fn, units))  # noqa: E731
    got = round_robin({"eager": timed(eager), "compiled": timed(compiled)}, rounds)
    result.update(eager_ips=got["eager"]["ips"], compiled_ips=got["compiled"]["ips"],
                  speedup=got["compiled"]["ips"] / got["eager"]["ips"])
    queue.put(result)


def _timed(fn, units):
    start = time.perf_counter()
    images = sum(fn() for _ in range(units))
    return {"ips": images / (time.perf_counter() - start)}


def _descendants(pid: int) -> list[int]:
    """Child processes of ``pid`` (inductor's compile workers), from /proc."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        for child in (task / "children").read_text().split():
            out += [int(child), *_descendants(int(child))]
    return out


def run_compile_case(case: dict, threads, rounds, units, limit_s, cache_dir) -> dict:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir  # the spawned child inherits it
    queue = CTX.Queue()
    proc = CTX.Process(target=_compile_case, args=(case["model"], case["inner_grad"], case["mode"], threads,
                                                   rounds, units, queue))
    proc.start()
    try:
        return queue.get(timeout=limit_s)
    except Exception:  # noqa: BLE001 -- queue.Empty: past the budget
        for pid in [*_descendants(proc.pid), proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return {"status": "timeout", "reason": f"no result within {limit_s:.0f} s (the compile budget)"}
    finally:
        proc.join(timeout=60)


def compile_cases(quick: bool) -> list[dict]:
    """In the order of what the choice needs most: Table 1's detached models, then the unrolled mode,
    the warm-cache rerun (what later trials on the same machine pay) and the other mode."""
    cases = [dict(model="vanilla", inner_grad=None, mode="default"),
             dict(model="ie1", inner_grad="unrolled", mode="default"),
             dict(model="ie1", inner_grad=None, mode="default"),
             dict(model="ie3", inner_grad=None, mode="default"),
             dict(model="vanilla", inner_grad=None, mode="default", warm=True),
             dict(model="vanilla", inner_grad=None, mode="max-autotune-no-cudagraphs")]
    return cases[:2] if quick else cases


def measure_compile(threads, rounds, units, budget_s, quick) -> dict:
    results, deadline, caches = {}, time.monotonic() + budget_s, {}
    for case in compile_cases(quick):
        name = f"{case['model']}{'_unrolled' if case['inner_grad'] else ''}/{case['mode']}" + (
            "/warm_cache" if case.get("warm") else "")
        left = deadline - time.monotonic()
        if left < 20:
            results[name] = {"status": "skipped", "reason": "compile budget spent (raise --compile-budget)"}
        else:
            cache = caches.get(name.rsplit("/", 1)[0]) if case.get("warm") else None
            cache = cache or caches.setdefault(name, tempfile.mkdtemp(prefix="cpu_paths_inductor_"))
            results[name] = run_compile_case(case, threads, rounds, units, left, cache) | {"threads": threads}
        print(f"  {name:<42}{_compile_line(results[name])}", flush=True)
    for cache in caches.values():
        shutil.rmtree(cache, ignore_errors=True)
    return results


def _compile_line(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['status']}: {r['reason']}"
    return (f"compile {r['compile_s']:6.1f} s, {r['graphs']} graphs, {r['graph_breaks']} breaks; "
            f"eager {r['eager_ips']:6.0f}, compiled {r['compiled_ips']:6.0f} img/s ({r['speedup']:.2f}x)")


# --- choices from the numbers ------------------------------------------------------------------------

def geomean(values) -> float:
    values = list(values)
    return statistics.geometric_mean(values) if values else float("nan")


def choose_layout(lay: dict, task: str, cores: int) -> tuple[int, int]:
    """The layout whose images/s, over the three models (geometric mean), is highest."""
    cands = {tuple(map(int, k.split("/")[2].split("x"))) for k in lay if k.split("/")[1] == task}
    score = lambda c: geomean(lay[f"{m}/{task}/{c[0]}x{c[1]}"]["ips"] for m in MODELS)  # noqa: E731
    return max(sorted(cands), key=score)


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
    if not verdicts:
        return "not measured", ", ".join(missing)
    detail = ", ".join(f"{m} {s:.2f}x, saves {v / 60:+.1f} min/trial" for m, s, v in verdicts)
    good = all(s >= GAIN and v > 0 for _, s, v in verdicts)
    return ("yes" if good else "no"), detail + "".join(f"; {m}" for m in missing)


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
    print(f"{'':<16}" + "".join(f"{p}x{t:<8}" for p, t in layouts(cores, True)) + "  (images/s, P processes x T threads)")
    for m in MODELS:
        for task in tasks:
            row = [lay.get(f"{m}/{task}/{p}x{t}") for p, t in layouts(cores, True)]
            print(f"{m + '/' + task:<16}" + "".join(f"{r['ips']:<10.0f}" if r else f"{'-':<10}" for r in row))


def load() -> str:
    return "load average %.2f %.2f %.2f" % os.getloadavg()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and compile cases (~4 min)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 7, quick 3)")
    parser.add_argument("--compile-budget", type=float, help="seconds for section 3 (default 330, quick 150)")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)
    budget = args.compile_budget or (150 if args.quick else 330)
    cores = len(os.sched_getaffinity(0))
    config = table1_config(0)
    epochs, train_images = config.epochs, TRAIN_IMAGES - config.val_size
    began = time.monotonic()
    out = {"quick": args.quick, "rounds": rounds, "cores": cores, "cpu": platform.processor() or platform.machine(),
           "torch": torch.__version__, "load_start": os.getloadavg(), "batch": config.batch_size,
           "sweep": str(SWEEP.name), "note": "shared machine: other processes ran concurrently; medians of "
                                             "interleaved rounds"}
    print(f"cpu_paths: Table 1 models on {cores} cores, torch {torch.__version__}, batch {config.batch_size}; "
          f"{load()} at start.\nThe machine is shared (other jobs run beside this one): comparisons are "
          f"interleaved, medians of {rounds} rounds.", flush=True)
    workers = Workers(cores)
    try:
        print("\n1. training step: processes x threads", flush=True)
        train_units = 2 if args.quick else 3
        out["layouts"] = measure_layouts(workers, cores, ("train",), rounds, {"train": train_units}, True)
        print_layouts(out["layouts"], ("train",), cores)
        p, t = choose_layout(out["layouts"], "train", cores)

        print(f"\n2. channels_last at {t} thread(s) per trial (train step, images/s)", flush=True)
        out["channels_last"] = measure_channels_last(workers, t, max(3, rounds - 2), train_units)
        for m in MODELS:
            off, on = (out["channels_last"][f"{m}/{f}"]["ips"] for f in ("contiguous", "channels_last"))
            print(f"  {m:<8} contiguous {off:6.0f}  channels_last {on:6.0f}  ({on / off:.2f}x)")

        print("\n3. evaluation path: FGSM and PGD-20 (examples/s)", flush=True)
        units = {"fgsm": 2, "pgd20": 1}
        out["layouts"] |= measure_layouts(workers, cores, ("fgsm", "pgd20"), 2 if args.quick else 3, units, False)
        print_layouts(out["layouts"], ("fgsm", "pgd20"), cores)
    finally:
        workers.close()

    print(f"\n4. torch.compile at {t} thread(s), train step (fresh process and inductor cache per case; "
          f"budget {budget:.0f} s)", flush=True)
    out["compile"] = measure_compile(t, max(3, rounds - 2), train_units, budget, args.quick)

    eval_lay = choose_layout(out["layouts"], "pgd20", cores)
    cl, cl_ratio = choose_channels_last(out["channels_last"])
    train_s = {m: p * epochs * train_images / out["layouts"][f"{m}/train/{p}x{t}"]["ips"] for m in MODELS}
    comp, comp_why = choose_compile(out["compile"], train_s)
    out["eval_share"] = eval_share(out["layouts"], (p, t), eval_lay, epochs, train_images)
    out["choice"] = {"trials_at_once": p, "threads_per_trial": t, "eval_layout": list(eval_lay),
                     "channels_last": cl, "channels_last_ratio": cl_ratio, "compile": comp, "compile_why": comp_why}
    out["load_end"], out["seconds"] = os.getloadavg(), time.monotonic() - began
    print_choice(out, cores)
    dest = Path(__file__).with_name("results")
    dest.mkdir(exist_ok=True)
    (dest / f"cpu_paths{'_quick' if args.quick else ''}.json").write_text(json.dumps(out, indent=1, default=str))


def print_choice(out: dict, cores: int):
    c, lay = out["choice"], out["layouts"]
    p, t = c["trials_at_once"], c["threads_per_trial"]
    ratios = ", ".join(f"{m} {lay[f'{m}/train/{cores}x1']['ips'] / lay[f'{m}/train/1x{cores}']['ips']:.2f}x"
                       for m in MODELS)
    print(f"\n{cores} trials x 1 thread over 1 trial x {cores} threads (training images/s): {ratios}")
    for m, s in out["eval_share"].items():
        print(f"  {m:<8} per trial at {p}x{t}: training {s['train_min']:5.0f} min, final FGSM + PGD-20 on the "
              f"test set {s['final_fgsm_pgd20_min']:5.0f} min ({100 * s['eval_share']:.0f}% of the two)")
    print(f"\nchoice: --local should run {p} trials x {t} thread(s) on this machine "
          f"(evaluation: {c['eval_layout'][0]}x{c['eval_layout'][1]}); "
          f"channels_last: {c['channels_last']} ({c['channels_last_ratio']:.2f}x); compile: {c['compile']} "
          f"({c['compile_why']})")
    print(f"{load()} at end; {out['seconds']:.0f} s in all.")


if __name__ == "__main__":
    main()
