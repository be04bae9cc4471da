"""docker/ read without a Docker engine: the compose file, the KubeRay manifests and the cluster launcher
config parse, run the pinned image, publish ports on 127.0.0.1 only and carry no default credentials."""
import configparser
import importlib.util
import re
import tomllib

import pytest
import yaml

from ..orchestration.helpers import REPO

pytestmark = pytest.mark.e2e

DOCKER = REPO / "docker"
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
IMAGES = {f"ieskips:{VERSION}": "cuda", f"ieskips:{VERSION}-cpu": "cpu"}  # tag -> TORCH_VARIANT
SECRET = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY$")
REQUIRED = re.compile(r"^\$\{(\w+):\?[^}]+\}$")  # ${VAR:?message}: no default, compose refuses to start


def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def manifests() -> list[dict]:
    found = []
    for path in sorted((DOCKER / "kuberay").glob("*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return found


def launcher() -> dict:
    return yaml.safe_load((DOCKER / "cluster-launcher.yaml").read_text())


def example_env() -> dict:
    pairs = [line.split("=", 1) for line in (DOCKER / "example.env").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


def walk(node, path=()):
    """Every (path, value) in a parsed YAML tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, (*path, index))
    else:
        yield path, node


def containers(doc: dict) -> list[dict]:
    return [value for path, value in walk(doc) if path and path[-1] == "image" and isinstance(value, str)]


# --- compose ---------------------------------------------------------------------------------------------

def test_compose_runs_the_pinned_image_built_from_this_dockerfile():
    services = compose()["services"]
    ours = {name: s for name, s in services.items() if s["image"].startswith("ieskips")}
    assert {"mlflow", "ray-head", "ray-worker-gpu"} <= set(ours)
    for name, service in ours.items():
        assert service["image"] in IMAGES, f"{name}: {service['image']} is not a pinned ieskips:{VERSION} tag"
        build = service["build"]  # every service that runs our image says how to build it: nothing is pulled
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKER / "Dockerfile"
        assert build["args"]["TORCH_VARIANT"] == IMAGES[service["image"]]
    assert ours["ray-worker-gpu"]["image"] == f"ieskips:{VERSION}"  # CUDA torch where the GPUs are
    others = [s["image"] for s in services.values() if not s["image"].startswith("ieskips")]
    assert others and all(re.fullmatch(r"[\w./-]+:\d[\w.-]*", image) for image in others), others


def test_compose_publishes_ports_on_127_0_0_1_only():
    published = {}
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (name, port)
                published[int(port["target"])] = name
            else:
                host, _, target = str(port).rpartition(":")
                assert host.startswith("127.0.0.1:"), (name, port)
                published[int(target)] = name
    assert published == {5000: "mlflow", 8265: "ray-head"}  # PostgreSQL and Ray's own ports stay inside
    assert "network_mode" not in str(compose())  # no host networking around the published ports


def test_compose_has_no_default_credentials_and_every_secret_is_required():
    text = (DOCKER / "docker-compose.yml").read_text()
    assert not re.search(r"\$\{\w*(PASSWORD|TOKEN|SECRET|KEY)\w*:?-", text), "a secret with a default value"
    secrets = {}
    for path, value in walk(compose()):
        if len(path) >= 2 and path[-2] == "environment" and SECRET.search(str(path[-1])):
            secrets[path[-1]] = value
            assert REQUIRED.match(str(value)), f"{'.'.join(map(str, path))} = {value!r} is not a required variable"
    assert {"POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY",
            "RAY_AUTH_TOKEN", "MLFLOW_TRACKING_PASSWORD"} <= set(secrets)
    # Every variable compose requires is in the example env file, empty there.
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = example_env()
    assert required <= set(example), required - set(example)
    assert {key: value for key, value in example.items() if value} == {}  # no value at all, no credential


def test_compose_turns_on_ray_token_auth_and_mlflow_basic_auth():
    services = compose()["services"]
    ray_nodes = {n: s for n, s in services.items() if "ray start" in str(s.get("command", ""))}
    assert {"ray-head", "ray-worker-gpu", "ray-worker-cpu"} <= set(ray_nodes)
    for name, service in ray_nodes.items():
        assert service["environment"]["RAY_AUTH_MODE"] == "token", name
        assert REQUIRED.match(service["environment"]["RAY_AUTH_TOKEN"]), name
        assert "/mnt/shared" in str(service["volumes"]), name  # Tune storage every node shares
    assert services["mlflow"]["command"] == ["python", "docker/start_mlflow.py"]
    assert "--app-name" in start_mlflow().server_command({}) and "basic-auth" in start_mlflow().server_command({})
    assert "ports" not in services["postgres"]


# --- the MLflow start script -----------------------------------------------------------------------------

def start_mlflow():
    spec = importlib.util.spec_from_file_location("start_mlflow", DOCKER / "start_mlflow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SECRETS = {"POSTGRES_PASSWORD": "p%ss@word/with:odd", "MLFLOW_AUTH_ADMIN_PASSWORD": "a-long-admin-password",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "k" * 32}


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_the_mlflow_server_refuses_to_start_without_each_secret(missing):
    with pytest.raises(SystemExit, match=missing):
        start_mlflow().check({**SECRETS, missing: ""})
    with pytest.raises(SystemExit, match="12 characters"):
        start_mlflow().check({**SECRETS, "MLFLOW_AUTH_ADMIN_PASSWORD": "short"})
    start_mlflow().check(SECRETS)  # all set: no complaint


def test_the_auth_config_keeps_an_odd_password_intact_and_grants_nothing_by_default():
    module = start_mlflow()
    parsed = configparser.ConfigParser()
    parsed.read_string(module.auth_config(SECRETS))
    assert parsed["mlflow"]["database_uri"] == module.database_uri(SECRETS, "mlflow_auth")
    assert "p%25ss%40word%2Fwith%3Aodd@postgres:5432/mlflow_auth" in parsed["mlflow"]["database_uri"]
    assert parsed["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    assert "admin_password" not in parsed["mlflow"]  # from the environment only
    assert parsed["mlflow"]["auth_cache_ttl_seconds"] == "60"  # a password hash per request costs 0.2 s
    off = configparser.ConfigParser()
    off.read_string(module.auth_config({**SECRETS, "MLFLOW_AUTH_CACHE_TTL": "0"}))
    assert off["mlflow"]["auth_cache_ttl_seconds"] == "0"


# --- the image -------------------------------------------------------------------------------------------

def test_the_dockerfile_installs_from_the_lock_file_as_an_unprivileged_user():
    text = (DOCKER / "Dockerfile").read_text()
    # The dependencies from pyproject.toml under the lock, then the project itself without dependencies.
    assert "pip install -c requirements.lock -r /tmp/requirements.txt" in text
    assert "pip install --no-deps -c requirements.lock ." in text and "pip check" in text
    assert re.search(r"^ARG TORCH_VARIANT=cuda$", text, re.M) and "cpu)" in text
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11[\w.-]*$", text, re.M)  # the Python the lock was made with
    assert re.search(r"^USER ray$", text, re.M)
    assert "RAY_AUTH_MODE=token" in text
    rules = [line for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert rules[0] == "**" and "docker/.env" in rules  # everything out, then what the image needs back in
    assert not any(rule.startswith("!.venv") or rule == "!**" for rule in rules)


def test_the_cluster_smoke_file_is_the_smoke_sweep_on_shared_storage():
    from orchestration.sweep.spec import load_spec

    smoke, cluster = load_spec(REPO / "sweeps" / "smoke.yaml"), load_spec(DOCKER / "smoke-cluster.yaml")
    assert cluster.storage_path == "/mnt/shared/ray_results" and cluster.storage_shared
    assert cluster.tracking_uri is None  # from $MLFLOW_TRACKING_URI on the nodes
    same = ("experiment", "base", "grid", "resources", "max_concurrent", "retries", "report")
    assert {k: getattr(cluster, k) for k in same} == {k: getattr(smoke, k) for k in same}


# --- KubeRay ---------------------------------------------------------------------------------------------

def test_kuberay_manifests_run_the_smoke_sweep_with_token_auth_on_the_pinned_image():
    import ray

    docs = manifests()
    kinds = {doc["kind"]: doc for doc in docs}
    assert {"RayJob", "RayCluster"} <= set(kinds)
    job = kinds["RayJob"]
    assert job["apiVersion"] == "ray.io/v1" and kinds["RayCluster"]["apiVersion"] == "ray.io/v1"
    assert job["spec"]["entrypoint"].startswith("ieskips sweep run sweeps/smoke.yaml")
    assert (REPO / "sweeps" / "smoke.yaml").is_file()
    for spec in (job["spec"]["rayClusterSpec"], kinds["RayCluster"]["spec"]):
        assert spec["authOptions"] == {"mode": "token"}
        assert spec["rayVersion"] == ray.__version__  # the Ray the lock file pins
    images = [image for doc in docs for image in containers(doc)]
    assert images and set(images) <= set(IMAGES), images
    assert f"ieskips:{VERSION}" in images  # GPU workers on the CUDA image


def test_kuberay_manifests_expose_nothing_and_hold_no_credentials():
    for doc in manifests():
        assert doc["kind"] != "Secret", "credentials belong in a Secret made with kubectl, not in the repo"
        for path, value in walk(doc):
            assert path[-1] not in ("hostNetwork", "hostPort", "nodePort"), path
            if path[-1] in ("serviceType", "type"):
                assert value not in ("LoadBalancer", "NodePort"), path
        for path, value in walk(doc):
            if path[-1] == "name" and isinstance(value, str) and SECRET.search(value):
                env = doc
                for part in path[:-1]:
                    env = env[part]
                assert "valueFrom" in env and "value" not in env, f"{value} must come from a Secret"


# --- cluster launcher ------------------------------------------------------------------------------------

def test_the_cluster_launcher_config_is_valid_for_ray_and_secure():
    import copy

    from ray.autoscaler._private.util import prepare_config, validate_config

    config = launcher()
    validate_config(prepare_config(copy.deepcopy(config)))
    docker = config["docker"]
    assert {docker["head_image"], docker["worker_image"]} <= set(IMAGES)
    head, workers = " ".join(config["head_start_ray_commands"]), " ".join(config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in workers
    assert "--dashboard-host=127.0.0.1" in head
    assert "~/.ray/auth_token" in config["file_mounts"]  # the token travels as a file, never inline
    assert not re.search(r"RAY_AUTH_TOKEN=\S", (DOCKER / "cluster-launcher.yaml").read_text())
