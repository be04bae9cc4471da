"""A trial's CPU, memory and GPUs, sampled while it runs and logged to its run (the UI's System metrics)."""
from __future__ import annotations

import os
import time
from pathlib import Path


class SystemMetrics:
    """CPU, memory and the trial's own GPUs, sampled in a thread of the trial's process and logged to
    the trial's run as ``system/...`` (the MLflow UI's System metrics tab). MLflow's own monitor needs
    psutil and reports every GPU of the machine through NVML, whatever CUDA_VISIBLE_DEVICES says; this
    one reads the process's own counters and only the GPUs torch sees (those Ray gave the trial).

    ``system/process_cpu_percentage``: CPU time of the trial's process over wall time (100 = one core);
    ``system/process_memory_megabytes``: its resident memory; ``system/system_memory_usage_percentage``:
    the node's; per visible GPU ``i``: ``gpu_i_memory_allocated_megabytes`` (this process's tensors),
    ``gpu_i_memory_reserved_megabytes`` and ``gpu_i_utilization_percentage`` (where NVML is available)."""

    def __init__(self, client, run_id: str, every: float | None = None):
        import threading

        self.client, self.run_id = client, run_id
        self.every = every or float(os.environ.get("IESKIPS_SYSTEM_METRICS_INTERVAL", "5"))
        self.start_ms = client.get_run(run_id).info.start_time
        self._stop, self._thread = threading.Event(), None
        self._cpu, self._wall = _cpu_seconds(), time.monotonic()

    def start(self) -> "SystemMetrics":
        import threading

        self._thread = threading.Thread(target=self._loop, name="ieskips-system-metrics", daemon=True)
        self._thread.start()
        return self

    def _loop(self):
        while not self._stop.wait(self.every):
            self._log()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None
            self._log()

    def sample(self) -> dict:
        now, cpu = time.monotonic(), _cpu_seconds()
        out = {"process_cpu_percentage": 100 * (cpu - self._cpu) / max(now - self._wall, 1e-6),
               "process_memory_megabytes": _rss_bytes() / 1e6}
        self._cpu, self._wall = cpu, now
        total, available = _memory()
        if total:
            out["system_memory_usage_percentage"] = 100 * (total - available) / total
        out.update(_gpus())
        return {f"system/{k}": float(v) for k, v in out.items()}

    def _log(self) -> None:
        from mlflow.entities import Metric

        try:
            stamp = int(time.time() * 1000)
            step = max(0, (stamp - self.start_ms) // 1000)  # seconds since the run began (over every attempt)
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, step) for k, v in self.sample().items()])
        except Exception:  # noqa: BLE001  (monitoring must never fail a trial)
            pass


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _rss_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # the peak, where /proc is missing


def _memory() -> tuple[int, int]:
    """(total, available) bytes of the node's memory; (0, 0) where /proc/meminfo is missing."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        return int(fields["MemTotal"].split()[0]) * 1024, int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 0, 0


def _gpus() -> dict:
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    out = {}
    for i in range(torch.cuda.device_count()):
        out[f"gpu_{i}_memory_allocated_megabytes"] = torch.cuda.memory_allocated(i) / 1e6
        out[f"gpu_{i}_memory_reserved_megabytes"] = torch.cuda.memory_reserved(i) / 1e6
        try:
            out[f"gpu_{i}_utilization_percentage"] = torch.cuda.utilization(i)
        except Exception:  # noqa: BLE001  (needs NVML)
            pass
    return out
