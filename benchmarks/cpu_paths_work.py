"""The units of work of ``cpu_paths.py``: Table 1's models doing one training step or one attacked batch,
in persistent spawned workers at a fixed thread count, and the interleaved rounds that time them."""
from __future__ import annotations

import multiprocessing
import statistics
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
CTX = multiprocessing.get_context("spawn")


def table1_config(ie_steps: int, inner_grad: str | None = None) -> TrialConfig:
    base = yaml.safe_load(SWEEP.read_text())["base"]
    return TrialConfig.from_dict({**base, "ie_steps": ie_steps, **({"inner_grad": inner_grad} if inner_grad else {})})


def attack_spec(config: TrialConfig, task: str) -> dict:
    """The file's own FGSM and (model-gradient) PGD-20 specs."""
    want = {"fgsm": ("fgsm", None), "pgd20": ("pgd", 20)}[task]
    return next(s for s in config.eval_attacks if (s["name"], s.get("steps")) == want and "inner_grad" not in s)


def make_work(model: str, task: str, channels_last=False, attack_batch=32, inner_grad=None, compile_mode=None):
    """A callable doing one unit (a train step or one attacked batch); returns the images it did."""
    config = table1_config(MODELS[model], inner_grad)
    torch.manual_seed(0)
    net = model_for(config)
    x, y = torch.rand(config.batch_size, 1, 28, 28), torch.randint(0, 10, (config.batch_size,))
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if compile_mode == "aot_eager":  # AOT autograd alone: what inductor builds on, without code generation
        torch._functorch.config.donated_buffer = False  # else its error hides the limit behind it
        net = torch.compile(net, backend="aot_eager")
    elif compile_mode:
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
    x, y = x[:attack_batch], y[:attack_batch]

    def attacked():
        adv = attack(net, x, y)
        with torch.no_grad():
            net(adv).argmax(1)  # scored as the evaluation does
        return len(y)
    return attacked


def _worker(conn, threads: int):
    """One process at ``threads`` threads for its whole life, as a trial's is (switching a process's
    thread count back and forth would time oneDNN's re-creation of its kernels, not the layout)."""
    torch.set_num_threads(threads)
    works = {}
    while (key := conn.recv()) is not None:
        if key not in works:  # built and run once untimed (first-call allocations, kernel creation)
            works[key] = make_work(*key)
            works[key]()
        conn.send("ready")
        conn.recv()
        cpu, start = time.process_time(), time.monotonic()  # monotonic: one clock for all processes
        images = works[key]()
        conn.send((start, time.monotonic(), time.process_time() - cpu, images))


class Workers:
    """Spawned workers by thread count, started on first use."""

    def __init__(self):
        self.pools: dict[int, list] = {}

    def _conns(self, count: int, threads: int) -> list:
        pool = self.pools.setdefault(threads, [])
        while len(pool) < count:
            parent, child = CTX.Pipe()
            proc = CTX.Process(target=_worker, args=(child, threads), daemon=True)
            proc.start()
            pool.append((parent, proc))
        return [conn for conn, _ in pool[:count]]

    def burst(self, layout: tuple[int, int], key: tuple) -> dict:
        """One unit of ``key`` in each of ``layout[0]`` workers at ``layout[1]`` threads, started together."""
        conns = self._conns(*layout)
        for c in conns:
            c.send(key)
        for c in conns:
            c.recv()
        for c in conns:
            c.send("go")
        done = [c.recv() for c in conns]
        wall = max(d[1] for d in done) - min(d[0] for d in done)
        images = sum(d[3] for d in done)
        return {"ips": images / wall, "ips_cpu": images / max(sum(d[2] for d in done), 1e-9)}

    def close(self):
        for conn, proc in (w for pool in self.pools.values() for w in pool):
            conn.send(None)
            proc.join(timeout=30)


def round_robin(runs: dict, max_rounds: int, budget_s: float) -> dict:
    """runs: {name: fn() -> {metric: value}}; rounds of one call each (A B C A B C ...) while the next
    round fits ``budget_s`` (at least one); the median of each metric and the samples."""
    samples, start = {name: [] for name in runs}, time.monotonic()
    for done in range(1, max_rounds + 1):
        for name, fn in runs.items():
            samples[name].append(fn())
        spent = time.monotonic() - start
        if spent * (done + 1) / done > budget_s:
            break
    return {name: {m: statistics.median(s[m] for s in got) for m in got[0]} | {"samples": got}
            for name, got in samples.items()}
