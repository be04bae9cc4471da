"""Training throughput on the local device, as images per second and ratios measured in one run
(issue 14). Runs anywhere: on a GPU at the paper's sizes (batch 128, widths 16 and 64), on a CPU at
small ones (batch 8, widths 8 and 16), where only the ratios mean something.

- natural, PGD-10 and TRADES training steps of PreAct ResNet-18 for vanilla, IE-1 detached and IE-1
  unrolled; fp32 against bf16 autocast; channels_last on and off;
- data loading's share of a step (the device-resident loader with crop and flip, and torchvision's
  DataLoader on the same uint8 data for comparison);
- four trials packed on one device (as four 0.25-GPU Ray trials, each process capped to a quarter
  of the memory) against one alone: aggregate images per second.
The targets on a GPU are printed beside the numbers; on a CPU they are marked "n/a".

    python benchmarks/gpu_throughput.py            # everything
    python benchmarks/gpu_throughput.py --quick    # one repeat less, no width-64 TRADES
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from pathlib import Path

import torch

from ieskips.config import TrialConfig
from ieskips.models import build_model
from ieskips.training import cap_gpu_memory
from ieskips.training.methods import METHODS

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"vanilla": (0, "detached"), "ie1_detached": (1, "detached"), "ie1_unrolled": (1, "unrolled")}
WIDE = "vanilla PGD-10 images/s at the larger width"
TARGETS = {"ie1_detached PGD-10 / vanilla (time)": ("<=", 2.2), "ie1_unrolled PGD-10 / vanilla (time)": ("<=", 3.5),
           "bf16 / fp32 vanilla PGD-10 (speed)": (">=", 1.7), "data loading share of a step": ("<", 0.02),
           "four packed / one alone (aggregate)": (">=", 1.5), WIDE: (">=", 3000)}  # on a GPU (H100 for WIDE)


def sizes(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"batch": 128, "widths": (16, 64), "repeats": 10, "data": 50000}
    return {"batch": 8, "widths": (8, 16), "repeats": 3, "data": 2000}


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(width, variant, method, device, batch, *, bf16=False, channels_last=False, norm="group"):
    """One training step (the method's attack, forward, backward, SGD update) as a function."""
    steps, mode = VARIANTS[variant]
    model = build_model("preact_resnet18", num_classes=10, in_channels=3, width=width, ie_steps=steps,
                        inner_grad=mode, norm=norm).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    config = TrialConfig.from_dict({"method": method, "train_steps": 10, "eval_attacks": []})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, labels = torch.rand(batch, 3, 32, 32, device=device), torch.randint(0, 10, (batch,), device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)

    def step():
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            loss, _ = METHODS[method](model, images, labels, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)

    return step


def step_seconds(width, variant, method, device, batch, *, bf16=False, channels_last=False, norm="group",
                 repeats=3) -> float:
    """Median seconds of one training step, after a warm-up step."""
    step = make_step(width, variant, method, device, batch, bf16=bf16, channels_last=channels_last, norm=norm)
    step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def steps_matrix(device, size, quick) -> list[dict]:
    rows = []
    for width in size["widths"]:
        for method in ("natural", "pgd", "trades"):
            if quick and method == "trades" and width == size["widths"][-1]:
                continue
            for variant in VARIANTS:
                for bf16 in (False, True):
                    for channels_last in (False, True):
                        seconds = step_seconds(width, variant, method, device, size["batch"], bf16=bf16,
                                               channels_last=channels_last, repeats=size["repeats"] - quick)
                        rows.append({"width": width, "method": method, "variant": variant, "bf16": bf16,
                                     "channels_last": channels_last, "seconds": seconds,
                                     "images_per_sec": size["batch"] / seconds})
                        print(f"  {method:<8} w{width:<3} {variant:<13} {'bf16' if bf16 else 'fp32'} "
                              f"{'CL' if channels_last else '  '} {size['batch'] / seconds:10.1f} img/s", flush=True)
    return rows


def memory_formats(device, size, quick) -> dict:
    """channels_last against contiguous, vanilla and IE-1 PGD-10 steps, with GroupNorm (whose CUDA kernel
    returns a contiguous tensor) and BatchNorm: the numbers the default is chosen from."""
    out = {}
    for norm in ("group", "batch"):
        for variant in ("vanilla", "ie1_detached"):
            times = {cl: step_seconds(size["widths"][0], variant, "pgd", device, size["batch"], channels_last=cl,
                                      norm=norm, repeats=size["repeats"] - quick) for cl in (False, True)}
            out[f"{norm}norm {variant}"] = times[False] / times[True]
    return out


def loading_share(device, size, step) -> dict:
    """Seconds to draw one augmented batch from each loader, as a share of a vanilla PGD-10 step."""
    from torch.utils.data import DataLoader, TensorDataset
    from torchvision import transforms

    from ieskips.device_loader import DeviceLoader

    images = torch.randint(0, 256, (size["data"], 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (size["data"],))
    ours = DeviceLoader(images, labels, size["batch"], shuffle=True, seed=0, augment=True, device=device)
    augment = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()])

    class Torchvision(TensorDataset):  # what the DataLoader path does per example: crop, flip, to float
        def __getitem__(self, i):
            return augment(images[i]).float() / 255, labels[i]

    theirs = DataLoader(Torchvision(images, labels), batch_size=size["batch"], shuffle=True)
    out = {}
    for name, loader in (("device_loader", ours), ("dataloader", theirs)):
        batches, start = 0, time.perf_counter()
        for x, _ in loader:
            x = x.to(device)
            batches += 1
            if batches == 20:
                break
        synchronize(device)
        out[name] = (time.perf_counter() - start) / batches / step
    return out


def _packed_worker(width, device_name, batch, seconds, share, barrier, queue):
    """One packed trial: capped as a fractional trial caps itself, then PGD-10 steps for ``seconds``. It
    always answers on ``queue`` (an error too), so the parent never waits for a worker that died."""
    torch.set_num_threads(1)
    device = torch.device(device_name)
    try:
        capped = cap_gpu_memory(share) if device.type == "cuda" else False  # what a 0.25-GPU trial does
        step = make_step(width, "vanilla", "pgd", device, batch)
        step()  # warm-up and allocations
        barrier.wait(timeout=120)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            step()
            done += batch
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
        queue.put({"images_per_sec": done / (time.perf_counter() - start), "capped": capped, "peak_gib": peak})
    except BaseException as err:  # noqa: BLE001  (out of memory, a broken barrier: reported, not hung on)
        barrier.abort()
        queue.put({"error": f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]})


def packing(device, size, seconds=20.0, counts=(1, 4)) -> dict:
    """Aggregate images/s of four processes sharing the device against one process alone; ``errors``
    lists what a worker raised (an out-of-memory under its cap, say), and then the ratio is None."""
    # CUDA needs fresh processes; on a CPU a fork starts in a moment (nothing has computed yet, so no
    # OpenMP pool is copied half-made)
    context = mp.get_context("spawn" if device.type == "cuda" else "fork")
    out, errors, peaks = {}, [], {}
    for count in counts:
        barrier, queue = context.Barrier(count), context.Queue()
        workers = [context.Process(target=_packed_worker, args=(size["widths"][0], str(device), size["batch"],
                                                                seconds, 1 / count, barrier, queue))
                   for _ in range(count)]
        for worker in workers:
            worker.start()
        answers = []
        for _ in workers:
            try:
                answers.append(queue.get(timeout=seconds + 180))
            except Exception:  # noqa: BLE001  (queue.Empty: a worker killed outright)
                answers.append({"error": "no answer from a worker"})
        for worker in workers:
            worker.join(30)
            if worker.is_alive():
                worker.kill()
        errors += [f"{count} packed: {a['error']}" for a in answers if "error" in a]
        rates = [a["images_per_sec"] for a in answers if "error" not in a]
        out[f"{count}_images_per_sec"] = sum(rates) if len(rates) == count else None
        peaks[count] = [round(a.get("peak_gib", 0.0), 3) for a in answers if "error" not in a]
    one, four = out.get(f"{counts[0]}_images_per_sec"), out.get(f"{counts[-1]}_images_per_sec")
    out.update(ratio=four / one if one and four else None, errors=errors, peak_gib=peaks)
    return out


def pick(rows, **where) -> dict:
    return next(r for r in rows if all(r[k] == v for k, v in where.items()))


def summary(rows, loading, packed, size) -> dict:
    base = dict(method="pgd", bf16=False, channels_last=False)
    small, large = size["widths"]
    vanilla = pick(rows, width=small, variant="vanilla", **base)["seconds"]
    return {"ie1_detached PGD-10 / vanilla (time)": pick(rows, width=small, variant="ie1_detached", **base)["seconds"] / vanilla,
            "ie1_unrolled PGD-10 / vanilla (time)": pick(rows, width=small, variant="ie1_unrolled", **base)["seconds"] / vanilla,
            "bf16 / fp32 vanilla PGD-10 (speed)": vanilla / pick(rows, width=small, variant="vanilla", method="pgd",
                                                                  bf16=True, channels_last=False)["seconds"],
            "data loading share of a step": loading["device_loader"],
            "dataloader share of a step (torchvision, for comparison)": loading["dataloader"],
            "four packed / one alone (aggregate)": packed["ratio"],
            WIDE: pick(rows, width=large, variant="vanilla", **base)["images_per_sec"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pack-seconds", type=float, default=20.0)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    size = sizes(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, batch {size['batch']}, widths {size['widths']}", flush=True)
    rows = steps_matrix(device, size, args.quick)
    step = pick(rows, width=size["widths"][0], variant="vanilla", method="pgd", bf16=False, channels_last=False)
    formats = memory_formats(device, size, args.quick)
    loading = loading_share(device, size, step["seconds"])
    packed = packing(device, size, args.pack_seconds)
    ratios = summary(rows, loading, packed, size)
    ratios.update({f"channels_last speed-up, {k}": v for k, v in formats.items()})
    for key, value in ratios.items():
        target = TARGETS.get(key)
        verdict = verdict_of(value, target, device)
        shown = "not measured" if value is None else f"{value:.3f}"  # packing's ratio when a worker failed
        print(f"{key:<60}{shown:>12}  {'' if target is None else f'target {target[0]} {target[1]}'}  {verdict}")
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_throughput.json").write_text(json.dumps(
        {"device": name, "sizes": size, "steps": rows, "loading_share": loading, "packing": packed,
         "ratios": ratios}, indent=1))


def eval_target(value, op, bound) -> bool:
    return {"<=": value <= bound, ">=": value >= bound, "<": value < bound}[op]


def verdict_of(value, target, device) -> str:
    """PASS or FAIL against a GPU target; on a CPU, or with nothing measured, it says so."""
    if target is None:
        return ""
    if value is None:
        return "not measured"
    return "n/a on CPU" if device.type != "cuda" else "PASS" if eval_target(value, *target) else "FAIL"


if __name__ == "__main__":
    main()
