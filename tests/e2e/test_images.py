"""The image checks CI can afford (a full build downloads several GB and takes ~17 min here: see the
README's "On a cluster"). Three tiers, cheapest first:

- always: docker/Dockerfile read against what the code and the deploy files need: it takes only named
  files from the repository, everything it installs is pinned in requirements.lock, the local recipes
  carry the settings this kind of host needs, the compose file they run differs only in images and paths;
- where podman exists: the Dockerfile's `sources` stage (no torch, no RUN, no network: ~10 s) built from a
  copy of the repository salted with files that must never reach an image (docker/.env, a virtualenv,
  bytecode, a results folder); the image's files are read back and compared;
- where the image docker/build-local.sh builds exists locally: it runs as the unprivileged user, its
  `ieskips --help` works and every installed version is the lock's.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tarfile
import tomllib
import uuid
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from ..orchestration.helpers import REPO

pytestmark = pytest.mark.e2e

DOCKER = REPO / "docker"
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
IMAGE = f"ieskips:{PROJECT['version']}"
PODMAN = shutil.which("podman")
PODMAN_ENV = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF", str(DOCKER / "local" / "containers.conf"))}


# `pip freeze`, which wrote the lock, leaves these out; torch 2.14.1 requires setuptools>=77.0.3, so the
# image takes the newest setuptools (84.2.1 when built here, the same as .venv). Pin it in the lock
# (setuptools==84.2.1) and this allowance goes.


def instructions() -> list[tuple[int, str, str]]:
    """(stage index, instruction, arguments) of docker/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    found, stage = [], -1
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word, _, rest = line.strip().partition(" ")
        stage += word.upper() == "FROM"
        found.append((stage, word.upper(), rest.strip()))
    return found


def copies(stage: int) -> list[list[str]]:
    return [args.split() for index, word, args in instructions() if index == stage and word == "COPY"]


def lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            pins[canonicalize_name(name)] = version.strip()
    return pins


def local_module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- always: the Dockerfile against what the code needs ------------------------------------------------

def test_the_image_takes_only_named_files_from_the_repository():
    """A whole folder (docker/, or `.`) would carry docker/.env or a virtualenv in with any builder that
    ignores Dockerfile.dockerignore; named files cannot."""
    stages = {index: args for index, word, args in instructions() if word == "FROM"}
    assert stages[0].endswith("AS sources") and len(stages) == 2
    taken = []
    for args in copies(0):
        *sources, _ = args
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
            assert source not in (".", "docker", "docker/") and not source.startswith(("/", "..")), source
        taken += sources
    assert all(args[0] == "--from=sources" for args in copies(1)), "the image reads the context only via sources"
    # What the deploy files run inside the image is among what it takes.
    compose = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    assert compose["services"]["mlflow"]["command"] == ["python", "docker/start_mlflow.py"]
    needed = {"docker/start_mlflow.py", "docker/smoke-cluster.yaml", "sweeps", "ieskips", "orchestration",
              "pyproject.toml", "requirements.lock", "README.md"}
    assert needed <= set(taken), needed - set(taken)


def _requirements_installed_by_the_image() -> list[Requirement]:
    run = next(args for index, word, args in instructions() if index == 1 and "-r /tmp/requirements.txt" in args)
    words = run.split("-r /tmp/requirements.txt", 1)[1].split(";", 1)[0].split()
    extra = [word.strip('"\'') for word in words]
    assert extra, run
    return [Requirement(r) for r in PROJECT["dependencies"] + extra]


def test_everything_the_image_installs_is_pinned_in_the_lock():
    """The image's pip install takes versions from requirements.lock as constraints: a package outside it
    would float. Walk the requirements (extras included) through the installed metadata."""
    from importlib.metadata import PackageNotFoundError, requires

    pins, seen, missing = lock(), set(), []
    todo = [(req, frozenset(req.extras)) for req in _requirements_installed_by_the_image()]
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        if name not in pins:
            missing.append(str(req))
            continue
        try:
            subs = [Requirement(r) for r in requires(req.name) or []]
        except PackageNotFoundError:
            missing.append(f"{req} (not installed here)")
            continue
        for sub in subs:
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in (extras or {""})):
                todo.append((sub, frozenset(sub.extras)))
    assert not missing, f"the image would install these unpinned: {missing}"
    assert {"torch", "ray", "mlflow", "psycopg2-binary", "flask-wtf"} <= {n for n, _ in seen}


def test_the_local_recipes_carry_what_this_kind_of_host_needs():
    build = (DOCKER / "build-local.sh").read_text()
    assert "--ignorefile docker/Dockerfile.dockerignore" in build and "--network=host" in build
    assert re.search(r'--volume "\$CA:\$CA:ro"', build), "the CA bundle is mounted read-only, never copied"
    assert "--build-arg PYTHON_IMAGE=" in build and "mmdebstrap" in build
    assert not re.search(r"--build-arg \w*(PASSWORD|TOKEN|SECRET|KEY)", build)
    conf = tomllib.loads((DOCKER / "local" / "containers.conf").read_text())
    assert conf["containers"]["default_ulimits"] == ["nofile=20000:20000", "nproc=32768:32768"]
    assert conf["engine"]["runtime"] == "runc"
    for script in ("build-local.sh", "compose-up-local.sh", "local/postgres-entrypoint.sh"):
        subprocess.run(["bash", "-n", str(DOCKER / script)], check=True)


def test_the_local_compose_file_differs_only_in_images_and_paths():
    source = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
    changed = local_module(DOCKER / "local" / "compose_local.py").local(
        source, str(DOCKER), IMAGE, "localhost/pg:standin")
    assert set(changed["services"]) == set(source["services"]) - {"ray-worker-gpu"}
    for name, service in changed["services"].items():
        before = source["services"][name]
        assert service["image"] == ("localhost/pg:standin" if name == "postgres" else IMAGE)
        kept = {k: v for k, v in before.items() if k not in ("image", "build", "volumes", "profiles")}
        assert {k: service[k] for k in kept} == kept, name  # commands, environment (secrets), ports, ...
        for volume in service.get("volumes", []):
            assert not volume.startswith("./") and (":" in volume)
            assert not volume.startswith("/") or Path(volume.split(":")[0]).exists(), volume
    assert source["services"]["ray-worker-cpu"]["image"].endswith("-cpu")  # the source is left as it was


# --- where podman exists: the stage without torch -------------------------------------------------------

def podman(*args, run=False, **kw) -> subprocess.CompletedProcess:
    """podman ``args``; ``run``: containers run, with docker/local/containers.conf (runc, the ulimits) as
    docker/build-local.sh used it. Without ``run`` (build, create, export) no runtime is involved."""
    return subprocess.run([PODMAN, *args], env=PODMAN_ENV if run else os.environ, check=True,
                          capture_output=True, text=True, **kw)


def _context(folder: Path) -> set[str]:
    """A copy of what the sources stage reads, salted; returns the files the stage must hold."""
    expected = set()
    for args in copies(0):
        *sources, destination = args
        for source in sources:
            path = REPO / source
            files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
            for file in files:
                relative = file.relative_to(REPO)
                if "__pycache__" in relative.parts or file.suffix == ".pyc":
                    continue
                (folder / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, folder / relative)
                expected.add(str(relative))
    for name in ("Dockerfile", "Dockerfile.dockerignore"):
        shutil.copy2(DOCKER / name, folder / "docker" / name)
    for decoy in DECOYS:
        (folder / decoy).parent.mkdir(parents=True, exist_ok=True)
        (folder / decoy).write_text("must not be in the image\n")
    return expected


DECOYS = ("docker/.env", ".venv/bin/python", "ieskips/__pycache__/x.cpython-311.pyc", "orchestration/stale.pyc",
          "results/smoke/runs.json", "mlflow.db")


@pytest.mark.skipif(PODMAN is None, reason="podman is not installed (Debian: apt-get install podman)")
def test_the_sources_stage_holds_exactly_the_files_it_names(tmp_path):
    expected = _context(tmp_path)
    tag = f"localhost/ieskips-sources-test:{uuid.uuid4().hex[:8]}"
    # FROM scratch: no base image, no registry, no network; the stage has no RUN, so no runtime either.
    podman("build", "-q", "--target", "sources", "--build-arg", "PYTHON_IMAGE=scratch", "--network=none",
           "--pull=never", "--ignorefile", str(tmp_path / "docker" / "Dockerfile.dockerignore"),
           "-f", str(tmp_path / "docker" / "Dockerfile"), "-t", tag, str(tmp_path), timeout=300)
    try:
        container = podman("create", tag).stdout.strip()
        try:
            podman("export", "-o", str(tmp_path / "fs.tar"), container, timeout=120)
        finally:
            podman("rm", container)
    finally:
        podman("rmi", tag)
    with tarfile.open(tmp_path / "fs.tar") as archive:
        held = {m.name.removeprefix("app/") for m in archive.getmembers() if m.isfile()}
    assert not held & set(DECOYS)
    assert held == expected, (held - expected, expected - held)


# --- where the image exists: the real thing ------------------------------------------------------------

def _image_exists() -> bool:
    return PODMAN is not None and subprocess.run([PODMAN, "image", "exists", IMAGE], env=PODMAN_ENV).returncode == 0


@pytest.mark.skipif(not _image_exists(), reason=f"no image {IMAGE} here (docker/build-local.sh builds it)")
def test_the_built_image_runs_unprivileged_with_the_locked_versions_and_no_secret():
    script = "id -u; ieskips --help >/dev/null && echo help-ok; ls -A /app/docker; echo ---; pip freeze"
    out = podman("run", "--rm", "--network=none", IMAGE, "sh", "-c", script, run=True, timeout=300).stdout
    head, _, freeze = out.partition("---\n")
    uid, help_ok, *docker_files = head.split()
    assert uid == "1000" and help_ok == "help-ok"
    assert sorted(docker_files) == ["smoke-cluster.yaml", "start_mlflow.py"]
    pins = lock()
    installed = dict(line.split("==", 1) for line in freeze.splitlines() if "==" in line)
    wrong = {n: v for n, v in installed.items()
             if canonicalize_name(n) != "ieskips" and pins.get(canonicalize_name(n)) != v}
    assert not wrong, f"versions that are not the lock's: {wrong}"
    env = podman("image", "inspect", "--format", "{{json .Config.Env}}", IMAGE).stdout
    assert not re.search(r"(PASSWORD|TOKEN|SECRET|_KEY)=", env), env
