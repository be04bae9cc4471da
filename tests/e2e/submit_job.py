"""Submit a job to a Ray cluster through the Jobs API and wait for it, as a laptop would.

Runs in its own process so that Ray's authentication state (read once per process from
``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN``) never leaks into the test process. Arguments: the dashboard
address and the entrypoint; ``SUBMIT_ENV_VARS`` (JSON, from the environment so that no secret shows in
``ps``) becomes the job's ``runtime_env`` env_vars. Prints one JSON line: job id, final status, log tail.
"""
from __future__ import annotations

import json
import os
import sys
import time


def main(address: str, entrypoint: str, timeout: float = 420) -> int:
    from ray.job_submission import JobStatus, JobSubmissionClient

    end = time.monotonic() + 60
    while True:  # the dashboard answers a few seconds after the head node starts
        try:
            client = JobSubmissionClient(address)
            break
        except ConnectionError:
            if time.monotonic() > end:
                raise
            time.sleep(1)
    env_vars = json.loads(os.environ.get("SUBMIT_ENV_VARS", "{}"))
    # working_dir=None: the code is installed on every node (the venv here, the image on a cluster).
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env={"env_vars": env_vars})
    end = time.monotonic() + timeout
    status = client.get_job_status(job_id)
    while not status.is_terminal() and time.monotonic() < end:
        time.sleep(2)
        status = client.get_job_status(job_id)
    if not status.is_terminal():
        client.stop_job(job_id)
    print(json.dumps({"job_id": job_id, "status": str(status.value if hasattr(status, "value") else status),
                      "logs": client.get_job_logs(job_id)[-6000:]}))
    return 0 if status == JobStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
