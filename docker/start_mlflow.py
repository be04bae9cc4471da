"""Start the MLflow tracking server of compose.yml: basic auth on, runs and users in PostgreSQL, artifacts
on a volume.

Every secret comes from the environment (docker/.env, see docker/example.env). None has a default: the
server refuses to start without them. The auth configuration (it holds the database password) is
written to a private temporary file, never to the image or a volume.
"""
from __future__ import annotations

import os
import sys
import tempfile
from urllib.parse import quote

REQUIRED = ("POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")
MIN_PASSWORD = 12  # MLflow's own minimum for the admin password
# Hosts the server answers to: the published port on the host, and the Ray nodes on the compose network
# (MLflow's default list holds private IPs but not the service name "mlflow").
ALLOWED_HOSTS = "localhost,localhost:*,127.0.0.1,127.0.0.1:*,mlflow,mlflow:*"


def check(env) -> None:
    missing = [key for key in REQUIRED if not env.get(key)]
    if missing:
        raise SystemExit(f"start_mlflow: set {', '.join(missing)} in docker/.env (see docker/example.env); "
                         "there are no default credentials")
    if len(env["MLFLOW_AUTH_ADMIN_PASSWORD"]) < MIN_PASSWORD:
        raise SystemExit(f"start_mlflow: MLFLOW_AUTH_ADMIN_PASSWORD must have at least {MIN_PASSWORD} characters")


def database_uri(env, database: str) -> str:
    user = env.get("POSTGRES_USER") or "mlflow"
    host = env.get("POSTGRES_HOST") or "postgres:5432"
    # The driver by name: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, and the image has psycopg2.
    return f"postgresql+psycopg2://{quote(user, safe='')}:{quote(env['POSTGRES_PASSWORD'], safe='')}@{host}/{database}"


def auth_config(env) -> str:
    """The basic-auth ini: users in their own database; new users see nothing until granted
    (``MLFLOW_AUTH_DEFAULT_PERMISSION`` changes that, e.g. to READ).

    Successful credential checks are cached for ``MLFLOW_AUTH_CACHE_TTL`` seconds (default 60; 0 turns
    the cache off). Without it every request pays two scrypt password checks of ~0.1 s CPU each (MLflow
    checks again to see if the user is an admin; a search pays four): measured on 2 cores, 0.28 s per
    request against 0.03 s without auth, and a sweep's trials make thousands of requests. A password
    changed or a user deleted is then seen by the other server workers within that time."""
    uri = database_uri(env, env.get("POSTGRES_AUTH_DB") or "mlflow_auth")
    permission = env.get("MLFLOW_AUTH_DEFAULT_PERMISSION") or "NO_PERMISSIONS"
    return ("[mlflow]\n"
            f"default_permission = {permission}\n"
            f"database_uri = {uri.replace('%', '%%')}\n"  # configparser interpolates '%'
            "admin_username = admin\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            f"auth_cache_ttl_seconds = {int(env.get('MLFLOW_AUTH_CACHE_TTL') or 60)}\n")


def server_command(env) -> list[str]:
    return ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--app-name", "basic-auth",
            "--workers", env.get("MLFLOW_WORKERS") or "2", "--artifacts-destination", "/mlflow/artifacts"]


def main() -> None:
    env = os.environ
    check(env)
    fd, path = tempfile.mkstemp(prefix="mlflow-auth-", suffix=".ini")  # mode 0600
    with os.fdopen(fd, "w") as handle:
        handle.write(auth_config(env))
    env["MLFLOW_AUTH_CONFIG_PATH"] = path
    env["MLFLOW_BACKEND_STORE_URI"] = database_uri(env, env.get("POSTGRES_DB") or "mlflow")
    env.setdefault("MLFLOW_SERVER_ALLOWED_HOSTS", ALLOWED_HOSTS)
    # MLflow's job runner (GenAI scoring and archival schedulers) is unused here; off, the server starts
    # several times faster and holds fewer processes.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    command = server_command(env)
    sys.stdout.flush()
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
