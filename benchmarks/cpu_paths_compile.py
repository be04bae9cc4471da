"""Section 4 of ``cpu_paths.py``: torch.compile of Table 1's training step, one fresh process per case
with an empty inductor cache (the first step's time is the compile time), then eager and compiled steps
interleaved for the steady state."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import torch

from cpu_paths_work import CTX, make_work, round_robin

STEADY_S, STEADY_ROUNDS = 60, 15  # a compile case's interleaved steady state: single steps, so many rounds


def _compile_case(model, inner_grad, mode, threads, conn):
    logging.getLogger("torch").setLevel(logging.ERROR)
    torch.set_num_threads(threads)
    eager = make_work(model, "train", inner_grad=inner_grad)
    compiled = make_work(model, "train", inner_grad=inner_grad, compile_mode=mode)
    start = time.perf_counter()
    try:
        compiled()
    except Exception as err:  # noqa: BLE001 -- an unsupported mode is a result, not a crash
        reason = f"{type(err).__name__}: " + next((ln for ln in str(err).splitlines() if ln.strip()), "")
        conn.send({"status": "unsupported", "reason": reason[:240], "seconds_to_error": time.perf_counter() - start})
        return
    result = {"status": "ok", "compile_s": time.perf_counter() - start}
    eager(), compiled()  # second calls: any recompilation after the first optimizer step happens here
    counters = torch._dynamo.utils.counters
    result.update(graph_breaks=sum(counters["graph_break"].values()), graphs=counters["stats"]["unique_graphs"])
    timed = lambda fn: (lambda: _timed(fn))  # noqa: E731
    got = round_robin({"eager": timed(eager), "compiled": timed(compiled)}, STEADY_ROUNDS, STEADY_S)
    result.update(eager_ips=got["eager"]["ips"], compiled_ips=got["compiled"]["ips"],
                  speedup=got["compiled"]["ips"] / got["eager"]["ips"], rounds=len(got["eager"]["samples"]),
                  samples={k: [round(s["ips"], 1) for s in v["samples"]] for k, v in got.items()})
    conn.send(result)


def _timed(fn):
    start = time.perf_counter()
    images = fn()
    return {"ips": images / (time.perf_counter() - start)}


def _descendants(pid: int) -> list[int]:
    """Child processes of ``pid`` (inductor's compile workers), from /proc."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:  # the thread or process ended meanwhile
            continue
        for child in children:
            out += [int(child), *_descendants(int(child))]
    return out


def run_compile_case(case: dict, threads, limit_s, cache_dir) -> dict:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir  # the spawned child inherits it
    result, child = CTX.Pipe(duplex=False)
    proc = CTX.Process(target=_compile_case, args=(case["model"], case["inner_grad"], case["mode"], threads, child))
    proc.start()
    child.close()  # the child's end lives in the child only: its death reads as EOF here
    answered = False
    try:
        if result.poll(limit_s):
            answered, got = True, result.recv()
            return got
        return {"status": "timeout", "reason": f"no result within {limit_s:.0f} s (the compile budget)"}
    except EOFError:  # the child died without a word (killed for memory, a crash in the compiler)
        answered = True
        return {"status": "failed", "reason": f"the compile process ended with code {proc.exitcode}"}
    finally:  # past the budget or interrupted: the child and its compile workers go too
        proc.join(timeout=30 if answered else 0)
        if proc.is_alive():
            _kill_tree(proc.pid)
            proc.join(timeout=30)


def _kill_tree(pid: int) -> None:
    for each in [*_descendants(pid), pid]:
        try:
            os.kill(each, signal.SIGKILL)
        except ProcessLookupError:
            pass


def compile_cases(quick: bool) -> list[dict]:
    """Cheapest first: whether the unrolled mode compiles at all (checked with aot_eager, since inductor
    differentiates through the same AOT autograd, in seconds rather than minutes), then Table 1's
    detached models, the warm-cache rerun (what later trials on the same machine pay), the other mode."""
    cases = [dict(model="ie1", inner_grad="unrolled", mode="aot_eager"),
             dict(model="vanilla", inner_grad=None, mode="default"),
             dict(model="ie1", inner_grad=None, mode="default"),
             dict(model="ie3", inner_grad=None, mode="default"),
             dict(model="vanilla", inner_grad=None, mode="default", warm=True),
             dict(model="vanilla", inner_grad=None, mode="max-autotune-no-cudagraphs")]
    return cases[:1] if quick else cases  # --quick: minutes of cold compile per model do not fit


def measure_compile(results: dict, threads, budget_s, quick, save) -> None:
    """Fills ``results`` case by case, calling ``save()`` after each (a long section on a shared machine)."""
    deadline, caches = time.monotonic() + budget_s, {}
    try:
        _compile_cases(results, threads, deadline, quick, save, caches)
    finally:
        for cache in caches.values():
            shutil.rmtree(cache, ignore_errors=True)


def _compile_cases(results, threads, deadline, quick, save, caches):
    for case in compile_cases(quick):
        name = f"{case['model']}{'_unrolled' if case['inner_grad'] else ''}/{case['mode']}" + (
            "/warm_cache" if case.get("warm") else "")
        left = deadline - time.monotonic()
        if left < 20:
            results[name] = {"status": "skipped", "reason": "compile budget spent (raise --compile-budget)"}
        else:
            cache = caches.get(name.rsplit("/", 1)[0]) if case.get("warm") else None
            cache = cache or caches.setdefault(name, tempfile.mkdtemp(prefix="cpu_paths_inductor_"))
            results[name] = run_compile_case(case, threads, left, cache) | {"threads": threads}
        print(f"  {name:<42}{_compile_line(results[name])}", flush=True)
        save()


def _compile_line(r: dict) -> str:
    if r["status"] != "ok":
        return f"{r['status']}: {r['reason']}"
    return (f"compile {r['compile_s']:6.1f} s, {r['graphs']} graphs, {r['graph_breaks']} breaks; "
            f"eager {r['eager_ips']:6.0f}, compiled {r['compiled_ips']:6.0f} img/s ({r['speedup']:.2f}x)")
