"""Checks before a sweep starts anything or writes anything: a mistake found here is one line and exit
code 2, not a sweep of trials that fail (or wait PENDING forever).

- every attack in the file can be built: its optional dependencies import, here and on every node;
- every transfer source that is a checkpoint path is a readable model file (read with
  ``weights_only=True``: a pickle that would run code is refused, its code never runs);
- every per-trial resource request (CPUs, GPUs, memory) fits on some node: the local machine for a
  local Ray, else the cluster's alive nodes; skipped where an autoscaler is configured (it adds nodes
  on demand) or ``--autoscaling`` says so;
- on a local Ray, every data set the trials need is on this machine.
"""
from __future__ import annotations

import importlib.util
import os

from ieskips.errors import ConfigError

# Attacks whose code lives in an optional package (class attribute ``requires`` wins where present).
REQUIRES = {"autoattack": ("pyautoattack",), "square": ("pyautoattack",)}
GIB = 2**30


def attack_specs(spec) -> list[dict]:
    """Every attack spec of every trial (grid) config, transfer attacks' inner attacks included."""
    found, seen = [], set()
    for config in spec.trial_configs():
        stack = list(config.eval_attacks)
        while stack:
            attack = stack.pop()
            key = repr(sorted(attack.items(), key=lambda item: item[0]))
            if key not in seen:
                seen.add(key)
                found.append(attack)
            if attack.get("name") == "transfer":
                stack.append(attack.get("attack", {"name": "fgsm"}))
    return found


def required_modules(specs) -> dict[str, set[str]]:
    """Module -> the attack names that need it."""
    from ieskips.attacks import registry

    out: dict[str, set[str]] = {}
    for attack in specs:
        name = attack.get("name")
        cls = getattr(registry, "_ATTACKS", {}).get(name)
        for module in getattr(cls, "requires", None) or REQUIRES.get(name, ()):
            out.setdefault(module, set()).add(name)
    return out


def missing_modules(modules) -> list[str]:
    return sorted(m for m in modules if importlib.util.find_spec(m) is None)


def check_attacks(spec) -> dict[str, set[str]]:
    """The optional modules the file's attacks need, each importable here; returns them (for the nodes)."""
    needed = required_modules(attack_specs(spec))
    missing = missing_modules(needed)
    if missing:
        module = missing[0]
        raise ConfigError(f"attack {', '.join(sorted(needed[module]))} needs the Python package {module}, which is "
                          f"not installed here: pip install {_package(module)} (it is a dependency of ieskips; "
                          "reinstall with `pip install -e .`)")
    return needed


def _package(module: str) -> str:
    return {"pyautoattack": "pyautoattack==0.2.0"}.get(module, module)


def check_checkpoints(spec) -> None:
    """Transfer sources given as checkpoint paths are readable ieskips model files."""
    from ieskips.stored import read_model

    for attack in attack_specs(spec):
        source = attack.get("source")
        if attack.get("name") == "transfer" and isinstance(source, str) and source != "explicit":
            try:
                read_model(source)
            except ConfigError as err:
                raise ConfigError(f"transfer source: {err}") from None


def check_data(spec) -> None:
    """Every data set of the sweep is on this machine (a local Ray: the trials run here)."""
    from ieskips.data import load_dataset, resolve_root

    wanted = {(c.dataset, str(resolve_root(c.data_dir).resolve())) for c in spec.trial_configs() if not c.download}
    for dataset, root in sorted(wanted):  # (with download: true the trial fetches it)
        load_dataset(dataset, False, root=root)


# --- resources -----------------------------------------------------------------------------------

def local_nodes() -> list[dict]:
    """What a local Ray started here would declare: CPUs, GPUs, memory (bytes, as Ray counts it)."""
    import torch

    try:
        from ray._private.utils import get_num_cpus

        cpus = get_num_cpus()
    except Exception:  # noqa: BLE001  (a private helper: fall back to the affinity mask)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [{"NodeManagerAddress": "this machine", "Resources": {"CPU": cpus, "GPU": gpus,
                                                                 "memory": _memory_bytes() * 0.7}}]


def _memory_bytes() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return float("inf")


def cluster_nodes() -> list[dict]:
    import ray

    return [node for node in ray.nodes() if node.get("Alive")]


def autoscaler_configured() -> bool:
    """Best effort: Ray's autoscaler v2 announces itself in the GCS (KubeRay, the cluster launcher)."""
    try:
        from ray.autoscaler.v2.utils import is_autoscaler_v2

        return bool(is_autoscaler_v2(fetch_from_server=True))
    except Exception:  # noqa: BLE001
        return False


def check_resources(resources, nodes: list[dict], where: str) -> None:
    """Some node holds one trial's CPUs, GPUs and memory at once; else one line naming the fix."""
    want = {"CPU": resources.cpu, "GPU": resources.gpu, "memory": (resources.memory_gb or 0) * GIB}
    if any(all(node["Resources"].get(k, 0) >= v for k, v in want.items() if v) for node in nodes):
        return
    best = {k: max((node["Resources"].get(k, 0) for node in nodes), default=0) for k in want}
    short = [k for k, v in want.items() if v and best[k] < v]
    key = short[0] if short else "CPU"
    field, unit = {"CPU": ("cpu", ""), "GPU": ("gpu", ""), "memory": ("memory_gb", " GiB")}[key]
    have = best[key] / GIB if key == "memory" else best[key]
    asked = want[key] / GIB if key == "memory" else want[key]
    hint = ("add a node that has them, or pass --autoscaling if the cluster adds nodes on demand"
            if where != "this machine" else "run on a cluster that has them (--address)")
    together = "" if short else " (no node has all of them at once)"
    raise ConfigError(f"resources.{field}: each trial asks for {asked:g}{unit} {key}, but no node of {where} has "
                      f"that (the most is {have:g}{unit}){together}: lower resources.{field}, or {hint}")


def check_nodes_import(modules) -> None:
    """Every alive node can import ``modules`` (a task pinned to each node; holds no CPU)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not modules:
        return
    probe = ray.remote(num_cpus=0)(missing_modules)
    nodes = cluster_nodes()
    refs = {probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
            .remote(sorted(modules)): n for n in nodes}
    for ref, node in refs.items():
        try:
            missing = ray.get(ref, timeout=120)
        except Exception:  # noqa: BLE001  (a node that cannot run the probe is judged by Ray later)
            continue
        if missing:
            raise ConfigError(f"node {node.get('NodeManagerAddress')} cannot import {missing[0]} (needed by the "
                              f"sweep's attacks): install it there (pip install {_package(missing[0])})")


def run_checks(spec, address: str | None, autoscaling: bool = False) -> None:
    """Everything above, for a sweep about to run locally (``address`` None) or on a cluster (already
    joined)."""
    modules = check_attacks(spec)
    check_checkpoints(spec)
    if address is None:
        import ray

        # A Ray this process already started (ray.init(num_gpus=...)) declares what it has.
        running = ray.is_initialized()
        check_resources(spec.resources, cluster_nodes() if running else local_nodes(), "this machine")
        check_data(spec)
        return
    if not (autoscaling or autoscaler_configured()):
        check_resources(spec.resources, cluster_nodes(), "the cluster")
    check_nodes_import(modules)
