"""Shared helpers for the sweep tests: hermetic environments, sweep files, MLflow queries, servers."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def ray_env(extra=None) -> dict:
    """Token auth off explicitly (hermetic), and a short private Ray temp dir (socket paths are short)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**env, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": tempfile.mkdtemp(prefix="r", dir="/tmp"),
            "PYTHONUNBUFFERED": "1", **(extra or {})}


def write_spec(folder: Path, source: Path = REPO / "sweeps" / "smoke.yaml", **changes) -> Path:
    """``source`` (default: the smoke sweep) with ``changes`` (mappings are merged), written to ``folder``."""
    spec = yaml.safe_load(Path(source).read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def cli(*args, cwd, env, timeout=600, **kw):
    return subprocess.Popen([sys.executable, "-m", "orchestration.cli", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def runs(tracking_uri: str, experiment: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return client, [], []
    every = client.search_runs([found.experiment_id], max_results=1000)
    parents = [r for r in every if r.data.tags.get("ieskips.role") == "sweep"]
    trials = [r for r in every if r.data.tags.get("ieskips.role") == "trial"]
    return client, parents, trials


def wait_for(predicate, timeout: float, every: float = 0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not met in time")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real ``mlflow server`` on loopback with a SQLite backend (or ``backend``); stopped by its PID.

    ``admin_password``: serve the basic-auth app (``mlflow[auth]``) with that admin password; its user
    store is a SQLite file in ``folder`` too. ``log``: where the server's output goes (default: nowhere)."""

    def __init__(self, folder: Path, admin_password: str | None = None, log: Path | None = None,
                 backend: str | None = None):
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.auth = ("admin", admin_password) if admin_password else None
        mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent))
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        extra = []
        if admin_password:
            config = folder / "basic_auth.ini"
            config.write_text("[mlflow]\ndefault_permission = READ\n"  # as docker/start_mlflow.py, users in SQLite
                              f"database_uri = sqlite:///{folder / 'auth.db'}\nadmin_username = admin\n"
                              "auth_cache_ttl_seconds = 60\n")
            env.update(MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_AUTH_ADMIN_PASSWORD=admin_password,
                       MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
            extra = ["--app-name", "basic-auth"]
        out = open(log, "ab") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            [mlflow, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", backend or f"sqlite:///{folder / 'server.db'}",
             "--artifacts-destination", str(folder / "artifacts"), *extra],
            cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if log:
            out.close()
        try:
            wait_for(self._up, 90)
        except TimeoutError:
            self.stop()
            raise

    def _up(self):
        import urllib.request

        try:
            return urllib.request.urlopen(f"{self.uri}/health", timeout=2).status == 200
        except OSError:
            return False

    def pids(self) -> list[int]:
        return [self.proc.pid, *descendants(self.proc.pid)]

    def stop(self):
        stop_process_group(self.proc)


class Postgres:
    """Debian's PostgreSQL (the Makefile installs it), a fresh cluster in a new folder under /tmp listening
    on 127.0.0.1 only, as the compose file runs it for MLflow; trust authentication, for loopback tests.
    PostgreSQL refuses to run as root: as root, its programs run as the ``postgres`` user (so the folder
    is not under pytest's private temp directory, which that user cannot enter)."""

    def __init__(self, database: str = "mlflow"):
        import pwd

        self.folder = folder = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))

        versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
        assert versions, "PostgreSQL is not installed: apt-get install postgresql (make test does)"
        binaries, self.data = versions[-1].parent, folder / "pgdata"
        self.data.mkdir(parents=True)
        self.as_user = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            for path in (folder, self.data):
                os.chown(path, user.pw_uid, user.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        subprocess.run([*self.as_user, binaries / "initdb", "-D", self.data, "-A", "trust", "-U", "mlflow"],
                       check=True, capture_output=True)
        self.port = free_port()
        self.proc = subprocess.Popen(
            [*self.as_user, binaries / "postgres", "-D", self.data, "-h", "127.0.0.1", "-p", str(self.port),
             "-k", self.data], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: subprocess.run([binaries / "pg_isready", "-h", "127.0.0.1", "-p", str(self.port)],
                                        capture_output=True).returncode == 0, 60)
        subprocess.run([binaries / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "mlflow", database],
                       check=True, capture_output=True)
        self.uri = f"postgresql+psycopg2://mlflow@127.0.0.1:{self.port}/{database}"

    def stop(self):
        stop_process_group(self.proc)
        shutil.rmtree(self.folder, ignore_errors=True)


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` now alive (from /proc), so that none outlives its parent's group."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, parent in parents.items() if parent in frontier]
        found += kids
        frontier = kids
    return found


def stop_process_group(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM the process group a ``start_new_session`` child leads, then SIGKILL it and any descendant
    that left the group; only these PIDs, never by name."""
    family = descendants(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
            break
        except subprocess.TimeoutExpired:
            continue
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait(timeout=30)


class RayNode:
    """One node of a real Ray cluster: ``ray start --block`` in its own session, stopped by its PID.

    ``ip``: the node's address, in the loopback range but not 127.0.0.1 itself (Ray swaps 127.0.0.1 for
    the host's routable address, so each node gets its own 127.0.0.x and nothing leaves loopback). The head
    (``address=None``) also serves the dashboard and the Jobs API on 127.0.0.1; a worker joins ``address``.
    ``env`` must set ``RAY_AUTH_MODE`` (and ``RAY_AUTH_TOKEN`` for token auth): see ``token_ray_env``."""

    def __init__(self, env: dict, temp_dir: str, ip: str, num_cpus: int = 1, address: str | None = None,
                 log: Path | None = None):
        assert env.get("RAY_AUTH_MODE"), "set RAY_AUTH_MODE explicitly in every Ray process"
        assert ip.startswith("127.") and ip != "127.0.0.1", ip
        ray = shutil.which("ray", path=str(Path(sys.executable).parent))
        ports = ["--node-manager-port", free_port(), "--object-manager-port", free_port(),
                 "--runtime-env-agent-port", free_port(), "--dashboard-agent-grpc-port", free_port(),
                 "--dashboard-agent-listen-port", free_port(), "--metrics-export-port", free_port()]
        args = [ray, "start", "--block", "--node-ip-address", ip, "--num-cpus", str(num_cpus), "--num-gpus", "0",
                "--temp-dir", temp_dir, "--disable-usage-stats", *map(str, ports)]
        if address is None:
            # The head's Prometheus ports are fixed by default: a second cluster on the host would clash.
            env = {**env, "AUTOSCALER_METRIC_PORT": str(free_port()), "DASHBOARD_METRIC_PORT": str(free_port())}
            self.gcs_port, self.dashboard_port = free_port(), free_port()
            self.address = f"{ip}:{self.gcs_port}"
            self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
            args += ["--head", "--port", str(self.gcs_port), "--include-dashboard", "true",
                     "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                     "--ray-client-server-port", str(free_port())]
        else:
            self.address, self.dashboard = address, None
            args += ["--address", address]
        self.ip = ip
        out = open(log, "ab") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if log:
            out.close()

    def pids(self) -> list[int]:
        return [self.proc.pid, *descendants(self.proc.pid)]

    def stop(self):
        stop_process_group(self.proc, grace=5)


def token_ray_env(token: str, extra=None) -> dict:
    """``ray_env`` with token authentication on: every Ray process, node, driver or client, gets this."""
    return ray_env({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, **(extra or {})})


def listening_addresses(pids) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that one of ``pids`` holds (from /proc)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table, width in (("tcp", 4), ("tcp6", 16)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            host, port = fields[1].split(":")
            raw = bytes.fromhex(host)
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))  # little-endian words
            address = socket.inet_ntop(socket.AF_INET if width == 4 else socket.AF_INET6, words)
            found.add((address, int(port, 16)))
    return found
