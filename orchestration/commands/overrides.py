"""A sweep file adapted to the place it runs, without copying it: ``--set KEY=VALUE`` (dotted paths into
the file: ``base.data_dir=./data``, ``resources.gpu=0``, ``storage_path=./ray_results``,
``max_concurrent=2``) and ``--local`` (this machine's profile: resources that fit it, local storage, the
default data dir and tracking store, the cores split between the trials).

The result is validated as the file is. Keys that only say where and how a sweep runs leave every
trial's identity as it was, so one sweep can run partly here and partly on a cluster; keys that change
an identity are allowed and named (``Adapted.identity_keys``), because they make other trials.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field

import yaml

from ieskips.errors import ConfigError

from ..sweep.spec import SweepSpec, parse_spec

OVERRIDES_TAG = "ieskips.overrides"
# Threads per trial under --local, and the memory format, from benchmarks/cpu_paths.py on this kind of
# machine (2 cores): two 1-thread trials beat one 2-thread trial, and channels_last speeds the training
# step 1.19x. Neither changes a trial's identity.
LOCAL_THREADS = 1
LOCAL_CHANNELS_LAST = True


@dataclass(frozen=True)
class Adapted:
    spec: SweepSpec
    overrides: dict = field(default_factory=dict)  # dotted key -> value, as applied (--local's first)
    identity_keys: tuple = ()  # the keys among them that change some trial's identity

    def summary(self) -> str | None:
        if not self.overrides:
            return None
        shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in self.overrides.items())
        line = f"sweep {self.spec.name}: overrides {shown}"
        if self.identity_keys:
            line += (f"; {', '.join(self.identity_keys)} change the trials' identities (they are other trials "
                     "than the file's)")
        return line


def parse_sets(pairs) -> dict:
    """``["resources.gpu=0"]`` -> ``{"resources.gpu": 0}``; values read as YAML (``[0, 1]`` is a list)."""
    out = {}
    for pair in pairs or ():
        key, sep, text = pair.partition("=")
        if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
            raise ConfigError(f"--set expects KEY=VALUE with KEY a dotted path into the sweep file "
                              f"(e.g. base.data_dir=./data, resources.gpu=0), got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: {text!r} is not a YAML value") from None
    return out


def local_profile(spec: SweepSpec, cores: int | None = None, gpus: int | None = None) -> dict:
    """This machine's profile as overrides: the cores split between the trials (``LOCAL_THREADS`` each),
    a GPU share only where one is visible (else channels_last, faster on this CPU), Tune's storage and
    MLflow's store local, the data in the default root."""
    cores = cores or len(os.sched_getaffinity(0))
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count()
    threads = max(1, min(LOCAL_THREADS, cores))
    out = {"resources": {"cpu": threads, "gpu": min(spec.resources.gpu, gpus) if gpus else 0},
           "max_concurrent": max(1, cores // threads), "storage_path": None, "storage_shared": False,
           "tracking_uri": None, "base.channels_last": LOCAL_CHANNELS_LAST and not gpus}
    if "data_dir" in spec.base:
        out["base.data_dir"] = None
    return out


def adapt(spec: SweepSpec, sets=(), local: bool = False) -> Adapted:
    """``spec`` with ``--local``'s profile, then the ``--set`` pairs, applied and validated."""
    overrides = {**(local_profile(spec) if local else {}), **parse_sets(sets)}
    if not overrides:
        return Adapted(spec)
    values = spec.model_dump(mode="json")
    for key, value in overrides.items():
        _assign(values, key, value)
    adapted = parse_spec(values, f"{spec.name} with --set/--local")
    return Adapted(adapted, overrides, tuple(k for k in overrides if _changes_identity(spec, k, overrides[k])))


def _assign(values: dict, key: str, value) -> None:
    *path, last = key.split(".")
    node = values
    for i, part in enumerate(path):
        child = node.get(part) if isinstance(node, dict) else None
        if child is None and isinstance(node, dict) and part in ("resources", "budget", "search", "scheduler"):
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(path[:i + 1])
            raise ConfigError(f"--set {key}: {where} is not a section of the sweep file (sections: base, grid, "
                              "resources, search, scheduler, budget, report)")
        node = child
    if value is None and last in node and ".".join(path) == "base":
        del node[last]  # base.KEY=null: the trial config's default
    else:
        node[last] = value


def _changes_identity(spec: SweepSpec, key: str, value) -> bool:
    from ..sweep.identity import identity, trial_config

    values = spec.model_dump(mode="json")
    _assign(values, key, value)
    other = parse_spec(values, spec.name)
    before = [identity(trial_config(dict(spec.base), p)) for p in spec.grid_points()]
    after = [identity(trial_config(dict(other.base), p)) for p in other.grid_points()]
    return before != after


def record(client, parent_id: str, adapted: Adapted) -> None:
    """The overrides of this launch on the sweep's parent run (an empty mapping where there were none)."""
    client.set_tag(parent_id, OVERRIDES_TAG, json.dumps(copy.deepcopy(adapted.overrides), sort_keys=True)[:5000])
