"""docker-compose.yml as docker/compose-up-local.sh runs it with podman-compose on a machine without a
registry or GPUs: the same services, networks, volumes, commands and required secrets, with only

- the images: every ieskips service on IMAGE (the CUDA image; the CPU variant cannot be built here),
  PostgreSQL on the stand-in POSTGRES_IMAGE (docker/local/postgres.Containerfile);
- ray-worker-gpu left out (no GPU), `profiles` dropped (podman-compose 1.0 ignores them anyway);
- relative paths made absolute, since the file is written to another folder (beside its .env).

    python3 docker/local/compose_local.py SOURCE TARGET IMAGE POSTGRES_IMAGE

Nothing is interpolated here: ${VAR:?...} stays for podman-compose to fill from the .env beside TARGET.
"""
from __future__ import annotations

import os
import sys

import yaml

LEFT_OUT = ("ray-worker-gpu",)


def local(compose: dict, docker_dir: str, image: str, postgres_image: str) -> dict:
    services = {name: dict(service) for name, service in compose["services"].items() if name not in LEFT_OUT}
    for name, service in services.items():
        service.pop("profiles", None)
        if name == "postgres":
            service["image"] = postgres_image
        elif service["image"].startswith("ieskips:"):
            service["image"] = image
            service["build"] = {**service["build"],
                                "context": os.path.abspath(os.path.join(docker_dir, service["build"]["context"]))}
        if "volumes" in service:
            service["volumes"] = [os.path.abspath(os.path.join(docker_dir, v)) if v.startswith("./") else v
                                  for v in service["volumes"]]
    return {**compose, "services": services}


def main(source: str, target: str, image: str, postgres_image: str) -> None:
    with open(source) as handle:
        compose = yaml.safe_load(handle)
    with open(target, "w") as handle:
        yaml.safe_dump(local(compose, os.path.dirname(os.path.abspath(source)), image, postgres_image), handle,
                       sort_keys=False)


if __name__ == "__main__":
    main(*sys.argv[1:])
