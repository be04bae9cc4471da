"""One driver per sweep, one evaluation job per run: a lease held on an MLflow run.

A sweep driver (``sweep run`` / ``resume``) holds the lease of the sweep's parent run from its checks
to its end; an evaluation job holds the lease of every run it will write into. A second one exits 2 in
one line (``LeaseHeld``): who holds it (host, pid, command), since when, its last heartbeat, and when it
expires. The holder renews it from a background thread every ``ttl / 6`` seconds; it expires ``ttl``
seconds (``IESKIPS_LEASE_TTL``, default 60) after the last heartbeat, and may then be taken over: the
taker records the holder it replaced in the ``ieskips.lease.taken_over`` tag. So may the lease of a
holder that provably is gone: on the same machine (host name and boot id), in the same pid namespace,
its pid is no process now, or another one (another start time); e.g. ``sweep resume`` right after the
driver was killed. Normal exit, an error, Ctrl-C and SIGTERM (Ray turns it into ``SystemExit``)
release it (the ``with`` block); a driver killed outright elsewhere leaves its lease to expire.

Why the protocol is safe. MLflow tags are last-writer-wins, so a tag cannot decide between two drivers
that start together; but a run's params are write-once, in every tracking store (SQLite, PostgreSQL,
and so behind ``mlflow server``): the params table's primary key is (run, key), so of two
``log_param`` calls with one key and different values exactly one commits, the other fails with
"Changing param values is not allowed". The lease is a sequence of terms; term ``n`` belongs to whoever
wrote the param ``ieskips.lease.<n>`` (its value: the holder's id, host, pid, command, start, ttl).
To acquire: read the run; if its latest term ``n`` is live (not released, not expired), refuse;
otherwise write ``ieskips.lease.<n+1>`` and read it back: the holder is the one whose claim is there,
so two drivers racing for one term get one winner, whatever the timing; an error on the write (the race
lost, or a request retried after it went through) is judged by that read-back too. The one tag
``ieskips.lease`` (a JSON object: the holder, its heartbeat, expiry, release) says how fresh the term is;
it counts only for the term (and holder) it names, so a stale writer (a holder that was taken over
while it hung, and renews or releases once more) cannot revive or free a later term: readers then fall
back on the claim's own start + ttl. A holder that finds a later term than its own at its next
heartbeat has lost the lease: it says so and stops its job (as Ctrl-C would) without closing runs that
are no longer its own. Timing matters only for expiry: the hosts' clocks must agree to well under the
ttl (NTP does), or a lease may look expired early.

A new sweep has no parent run yet, and MLflow cannot create a run only if none exists: two drivers may
each create one. Each then waits ``SETTLE_S`` and keeps the earliest created (``find_parent_run``'s
order: start time, then run id); the other deletes its own. Both pick the same run as long as creating a
run takes, and the two hosts' clocks differ by, well under ``SETTLE_S``: a run that the other's second
look missed is then also stamped later. The lease of that one run then decides who drives. (MLflow
offers nothing write-once across runs that could decide this without a timing assumption.)
"""
from __future__ import annotations

import _thread
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from ieskips.errors import ConfigError

log = logging.getLogger("ieskips")
LEASE_TAG, TAKEN_OVER_TAG, CLAIM = "ieskips.lease", "ieskips.lease.taken_over", "ieskips.lease."
TTL_ENV = "IESKIPS_LEASE_TTL"
SETTLE_S = 2.0  # how long a driver that created a sweep's parent run waits for another one to show


class LeaseHeld(ConfigError):
    """Another live process holds the lease: the one line says who, since when, and when it expires."""


class LeaseLost(ConfigError):
    """The lease expired while its holder ran, and another process took it over."""


def lease_ttl() -> float:
    text = os.environ.get(TTL_ENV, "60")
    try:
        ttl = float(text)
    except ValueError:
        ttl = -1.0
    if not ttl > 0:
        raise ConfigError(f"{TTL_ENV}={text!r}: give the lease's lifetime in seconds (default 60)")
    return ttl


def _stamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def _shown(stamp: str) -> str:
    return datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _command() -> str:
    return " ".join(["ieskips", *sys.argv[1:]])[:200]


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot); None if there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _machine() -> dict:
    """Where this process lives: enough for a process on the same machine to tell that it has died."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return {}
    return {"boot": boot, "pidns": pidns, "started": _started(os.getpid())}


def holder_is_gone(state: dict) -> bool:
    """True only where it is sure: the holder ran on this machine, in this pid namespace, and its process
    is no more (its pid is free, or another process's)."""
    here = _machine()
    if not here or state.get("host") != socket.gethostname() or state.get("boot") != here["boot"] \
            or state.get("pidns") != here["pidns"] or not state.get("started"):
        return False
    return _started(int(state["pid"])) != state["started"]


def lease_state(run) -> dict | None:
    """The run's latest term: its claim (holder, host, pid, command, since, ttl_s) with ``term``,
    ``heartbeat``, ``expires`` and ``released`` (None: held); None if no lease was ever taken."""
    terms = {int(k[len(CLAIM):]): v for k, v in run.data.params.items()
             if k.startswith(CLAIM) and k[len(CLAIM):].isdigit()}
    if not terms:
        return None
    term = max(terms)
    claim = json.loads(terms[term])
    state = {**claim, "term": term, "heartbeat": claim["since"], "released": None,
             "expires": _stamp(_seconds(claim["since"]) + float(claim["ttl_s"]))}
    try:
        tag = json.loads(run.data.tags.get(LEASE_TAG, "{}"))
    except ValueError:
        tag = {}
    if tag.get("term") == term and tag.get("holder") == claim["holder"]:  # the tag of another term says nothing
        state.update({k: tag[k] for k in ("heartbeat", "expires", "released") if k in tag})
    return state


def is_live(state: dict | None, now: float | None = None) -> bool:
    return bool(state) and not state["released"] and (now or time.time()) < _seconds(state["expires"])


class Lease:
    """The lease of run ``run_id`` for this process. ``what`` names it in messages ("sweep smoke"),
    ``verb`` says what its holder does ("run by"); ``extra``: more fields for its claim (a job id)."""

    def __init__(self, tracking_uri: str, run_id: str, what: str, verb: str = "held by", *,
                 ttl: float | None = None, extra: dict | None = None):
        from mlflow.tracking import MlflowClient

        self.client, self.run_id, self.what, self.verb = MlflowClient(tracking_uri), run_id, what, verb
        self.ttl = float(ttl) if ttl else lease_ttl()
        self.me = {"holder": uuid.uuid4().hex[:12], "host": socket.gethostname(), "pid": os.getpid(),
                   "command": _command(), **_machine(), **(extra or {})}
        self.term: int | None = None
        self.claim: dict = {}
        self.lost: str | None = None
        self._warned = False

    def acquire(self) -> "Lease":
        """Take the lease: LeaseHeld if another live holder has it; an expired one, or one whose holder is
        gone, is taken over."""
        error = None
        for _ in range(5):  # a lost race ends at the next read (the winner's claim is live)
            state = lease_state(self.client.get_run(self.run_id))
            if is_live(state) and not holder_is_gone(state):
                raise LeaseHeld(self.held_line(state))
            term, now = (state["term"] if state else 0) + 1, time.time()
            claim = {**self.me, "since": _stamp(now), "ttl_s": self.ttl}
            try:
                self.client.log_param(self.run_id, f"{CLAIM}{term}", json.dumps(claim, sort_keys=True))
            except Exception as err:  # noqa: BLE001  (judged by the read-back below)
                error = err
            found = self.client.get_run(self.run_id).data.params.get(f"{CLAIM}{term}")
            if found is not None and json.loads(found).get("holder") == self.me["holder"]:
                self.term, self.claim = term, claim
                self._took(state, now)
                return self
        raise ConfigError(f"cannot take the lease of {self.what}: {str(error).splitlines()[0][:200]}")

    def _took(self, previous: dict | None, now: float) -> None:
        from mlflow.entities import RunTag

        tags = {LEASE_TAG: self._tag(now)}
        if previous and not previous["released"]:  # expired, or its holder is gone: say whose it was
            why = "expired" if now >= _seconds(previous["expires"]) else "its process is gone"
            tags[TAKEN_OVER_TAG] = json.dumps({**previous, "why": why, "by": self.me["holder"], "at": _stamp(now)})
            log.warning("%s: taking over the lease of %s pid %s (%s; last heartbeat %s)", self.what,
                        previous["host"], previous["pid"], why, _shown(previous["heartbeat"]))
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])

    def _tag(self, now: float, released: float | None = None) -> str:
        return json.dumps({**self.claim, "term": self.term, "heartbeat": _stamp(now),
                           "expires": _stamp(now + self.ttl),
                           **({"released": _stamp(released)} if released else {})}, sort_keys=True)

    def held_line(self, state: dict) -> str:
        return (f"{self.what} is {self.verb} {state['host']} pid {state['pid']} (`{state['command']}`) since "
                f"{_shown(state['since'])}, last heartbeat {_shown(state['heartbeat'])}; if that process is "
                f"dead, run this again after {_shown(state['expires'])}, when its lease expires")

    def _still_mine(self) -> bool:
        state = lease_state(self.client.get_run(self.run_id))
        if state is not None and state["term"] == self.term:
            return True
        who = f"{state['host']} pid {state['pid']} at {_shown(state['since'])}" if state else "another process"
        self.lost = (f"{self.what}: the lease expired while this process held it (no heartbeat for "
                     f"{self.ttl:g} s) and was taken over by {who}; stopped, leaving its runs to that one")
        return False

    def renew(self) -> bool:
        """One heartbeat; False once the lease has been taken over (``lost`` says by whom)."""
        if self.term is None or self.lost:
            return self.lost is None
        try:
            if not self._still_mine():
                return False
            self.client.set_tag(self.run_id, LEASE_TAG, self._tag(time.time()))
        except Exception as err:  # noqa: BLE001  (a store that is down: try again at the next beat)
            if not self._warned:
                log.warning("%s: cannot renew the lease (%s); retrying", self.what, str(err).splitlines()[0][:200])
                self._warned = True
        return True

    def release(self) -> None:
        """Mark the lease released, if it is still this process's term."""
        if self.term is None or self.lost:
            return
        try:
            if self._still_mine():
                now = time.time()
                self.client.set_tag(self.run_id, LEASE_TAG, self._tag(now, released=now))
        except Exception as err:  # noqa: BLE001  (then it expires)
            log.warning("%s: cannot release the lease (%s); it expires in %g s", self.what,
                        str(err).splitlines()[0][:200], self.ttl)
        self.term = None


def _stop_main(message: str) -> None:
    log.error("ieskips: %s", message)
    _thread.interrupt_main()  # as Ctrl-C: Tune stops the trials, then the driver checks `lost`


class Holding:
    """Leases held together, renewed by one background thread; ``with`` releases them at the end.
    ``on_lost(message)`` runs once a lease is taken over (default: stop the main thread, as Ctrl-C)."""

    def __init__(self, leases: list[Lease], on_lost=_stop_main):
        self.leases, self.on_lost = leases, on_lost
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="ieskips-lease", daemon=True)

    @property
    def lost(self) -> str | None:
        return next((lease.lost for lease in self.leases if lease.lost), None)

    def check(self) -> None:
        """LeaseLost if a lease was taken over: the runs are another process's now, not to be closed here."""
        if self.lost:
            raise LeaseLost(self.lost)

    def _beat(self) -> None:
        every = min((lease.ttl for lease in self.leases), default=60.0) / 6
        while not self._stop.wait(every):
            for lease in self.leases:
                if lease.lost is None and not lease.renew() and self.on_lost:
                    self.on_lost(lease.lost)

    def __enter__(self) -> "Holding":
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        for lease in self.leases:
            lease.release()


def hold(leases: list[Lease], on_lost=_stop_main) -> Holding:
    """Acquire every lease in order (all or none: LeaseHeld after releasing those taken) and renew them."""
    taken = []
    try:
        for lease in leases:
            taken.append(lease.acquire())
    except BaseException:
        for lease in taken:
            lease.release()
        raise
    holding = Holding(taken, on_lost)
    holding._thread.start()
    return holding


def sweep_parent(client, experiment_id: str, sweep: str, tags: dict) -> str:
    """The sweep's parent run, created if the sweep is new (its status left alone). Two drivers that
    create it at once keep the earliest created; see the module's docstring."""
    from ..records.tracking import ROLE_TAG, SWEEP_TAG, find_parent_run

    found = find_parent_run(client, experiment_id, sweep)
    if found is not None:
        return found.info.run_id
    mine = client.create_run(experiment_id, run_name=sweep, tags={SWEEP_TAG: sweep, ROLE_TAG: "sweep", **tags})
    time.sleep(SETTLE_S)
    first = find_parent_run(client, experiment_id, sweep)
    if first.info.run_id != mine.info.run_id:
        client.delete_run(mine.info.run_id)
    return first.info.run_id


def hold_sweep(spec, tracking_uri: str, parent_id: str | None = None) -> Holding:
    """The lease of the sweep's parent run (created first for a new sweep), held from here on."""
    from mlflow.tracking import MlflowClient

    from ..records.tracking import connect

    if parent_id is None:
        experiment_id = connect(tracking_uri, spec.experiment)
        parent_id = sweep_parent(MlflowClient(tracking_uri), experiment_id, spec.name,
                                 {"paper_table": spec.paper_table or ""})
    return hold([Lease(tracking_uri, parent_id, f"sweep {spec.name}", "run by")])


def hold_runs(tracking_uri: str, runs, job: str) -> Holding:
    """The leases of the runs an evaluation job writes into, all taken before it starts."""
    return hold([Lease(tracking_uri, run.info.run_id, f"run {run.info.run_name or run.info.run_id} "
                       f"({run.info.run_id})", "being evaluated by", extra={"job": job}) for run in runs])
