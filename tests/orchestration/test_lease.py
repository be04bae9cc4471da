"""One driver per sweep, one evaluation job per run: the lease protocol on a SQLite store, then two
`sweep run` and two `evaluate --sweep` of one sweep started together."""
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from ieskips.errors import ConfigError
from orchestration.sweep import lease as lease_module
from orchestration.sweep.lease import (LEASE_TAG, TAKEN_OVER_TAG, Lease, LeaseHeld, LeaseLost, hold, holder_is_gone, is_live,
                                 lease_state, lease_ttl, sweep_parent)

from .helpers import REPO, cli, descendants, ray_env, runs, wait_for, write_spec

HOST = socket.gethostname()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('lease') / 'mlflow.db'}"
    client = MlflowClient(uri)
    return uri, client, client.create_experiment("lease")


@pytest.fixture
def run_id(store):
    _, client, experiment = store
    return client.create_run(experiment).info.run_id


def _lease(store, run_id, ttl=30.0):
    return Lease(store[0], run_id, "sweep s", "run by", ttl=ttl)


def _state(store, run_id):
    return lease_state(store[1].get_run(run_id))


# --- the protocol (unit, on SQLite) ----------------------------------------------------------------------

@pytest.mark.unit
def test_a_second_holder_is_refused_in_one_line_naming_the_first(store, run_id):
    first = _lease(store, run_id).acquire()
    with pytest.raises(LeaseHeld) as refused:
        _lease(store, run_id).acquire()
    line = str(refused.value)
    assert "\n" not in line and line.startswith("sweep s is run by")
    assert f"{HOST} pid {os.getpid()}" in line and "since" in line and "last heartbeat" in line
    assert "run this again after" in line and "when its lease expires" in line
    state = _state(store, run_id)
    assert state["term"] == 1 and state["holder"] == first.me["holder"] and is_live(state)
    assert not holder_is_gone(state) and not holder_is_gone({**state, "host": "elsewhere", "pid": 2 ** 22 + 1})
    tag = json.loads(store[1].get_run(run_id).data.tags[LEASE_TAG])
    assert tag["host"] == HOST and tag["pid"] == os.getpid() and tag["command"].startswith("ieskips")


@pytest.mark.unit
def test_a_heartbeat_moves_the_expiry(store, run_id):
    holder = _lease(store, run_id, ttl=5).acquire()
    before = _state(store, run_id)
    time.sleep(0.05)
    assert holder.renew()
    after = _state(store, run_id)
    assert after["heartbeat"] > before["heartbeat"] and after["expires"] > before["expires"]
    assert after["since"] == before["since"]


@pytest.mark.unit
def test_an_expired_lease_is_taken_over_and_its_old_holder_finds_out(store, run_id):
    old = _lease(store, run_id, ttl=0.3).acquire()
    time.sleep(0.4)
    assert not is_live(_state(store, run_id))
    new = _lease(store, run_id).acquire()
    taken = json.loads(store[1].get_run(run_id).data.tags[TAKEN_OVER_TAG])
    assert taken["holder"] == old.me["holder"] and taken["pid"] == os.getpid() and taken["by"] == new.me["holder"]
    assert not old.renew() and "taken over by" in old.lost
    old.release()  # no longer its term: frees nothing
    state = _state(store, run_id)
    assert state["holder"] == new.me["holder"] and state["term"] == 2 and is_live(state)
    with pytest.raises(LeaseHeld):
        _lease(store, run_id).acquire()


@pytest.mark.unit
def test_the_lease_of_a_holder_that_is_gone_is_taken_over_at_once(store, run_id):
    code = ("import os, sys; from orchestration.sweep.lease import Lease; "
            "Lease(sys.argv[1], sys.argv[2], 'sweep s', ttl=600).acquire(); os._exit(0)")  # killed, in effect
    subprocess.run([sys.executable, "-c", code, store[0], run_id], cwd=REPO, check=True, timeout=300)
    state = _state(store, run_id)
    assert is_live(state) and holder_is_gone(state)
    new = _lease(store, run_id).acquire()
    taken = json.loads(store[1].get_run(run_id).data.tags[TAKEN_OVER_TAG])
    assert taken["why"] == "its process is gone" and taken["pid"] == state["pid"] and taken["by"] == new.me["holder"]


@pytest.mark.unit
def test_a_released_lease_is_free_at_once_and_not_a_take_over(store, run_id):
    first = _lease(store, run_id).acquire()
    first.release()
    assert not is_live(_state(store, run_id))
    second = _lease(store, run_id).acquire()
    assert _state(store, run_id)["holder"] == second.me["holder"]
    assert TAKEN_OVER_TAG not in store[1].get_run(run_id).data.tags


@pytest.mark.unit
def test_a_stale_writer_cannot_revive_or_free_a_later_term(store, run_id):
    _, client, _ = store
    old = _lease(store, run_id, ttl=0.2).acquire()
    time.sleep(0.3)
    new = _lease(store, run_id).acquire()
    now = time.time()
    client.set_tag(run_id, LEASE_TAG, old._tag(now, released=now))  # the old holder's last write lands late
    state = _state(store, run_id)
    assert state["holder"] == new.me["holder"] and is_live(state)  # judged by term 2's claim
    assert new.renew() and is_live(_state(store, run_id))


@pytest.mark.unit
def test_threads_racing_for_a_lease_get_one_winner(store):
    _, client, experiment = store
    for _ in range(3):
        run_id = client.create_run(experiment).info.run_id
        start, outcomes = threading.Barrier(6), []

        def race():
            contender = _lease(store, run_id)
            start.wait()
            try:
                contender.acquire()
                outcomes.append("won")
            except LeaseHeld:
                outcomes.append("held")

        threads = [threading.Thread(target=race) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert sorted(outcomes) == ["held"] * 5 + ["won"]
        assert _state(store, run_id)["term"] == 1


def _race_in_a_process(uri, run_id, start, results):
    contender = Lease(uri, run_id, "sweep s", "run by", ttl=30)
    start.wait(120)
    try:
        contender.acquire()
        results.put(("won", os.getpid()))
    except LeaseHeld as err:
        results.put(("held", str(err)))


@pytest.mark.unit
def test_processes_racing_for_a_lease_get_one_winner(store, run_id):
    context = multiprocessing.get_context("spawn")  # no SQLite connection crosses a fork
    start, results = context.Barrier(2), context.Queue()
    procs = [context.Process(target=_race_in_a_process, args=(store[0], run_id, start, results)) for _ in range(2)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=180) for _ in procs]
    for proc in procs:
        proc.join(60)
    won = [pid for kind, pid in outcomes if kind == "won"]
    assert len(won) == 1 and sorted(kind for kind, _ in outcomes) == ["held", "won"]
    assert all(f"pid {won[0]}" in text for kind, text in outcomes if kind == "held")
    assert _state(store, run_id)["pid"] == won[0]


@pytest.mark.unit
def test_the_heartbeat_thread_keeps_it_and_the_block_releases_it_even_on_ctrl_c(store, run_id, monkeypatch):
    monkeypatch.setenv("IESKIPS_LEASE_TTL", "0.6")
    assert lease_ttl() == 0.6
    with hold([Lease(store[0], run_id, "sweep s")], on_lost=None):
        time.sleep(1.5)  # longer than the ttl: only the heartbeats keep it
        with pytest.raises(LeaseHeld):
            _lease(store, run_id).acquire()
    assert not is_live(_state(store, run_id))
    with pytest.raises(KeyboardInterrupt):
        with hold([Lease(store[0], run_id, "sweep s")], on_lost=None):
            raise KeyboardInterrupt
    assert _state(store, run_id)["released"]


@pytest.mark.unit
def test_a_holder_that_was_taken_over_stops(store, run_id, monkeypatch):
    monkeypatch.setenv("IESKIPS_LEASE_TTL", "0.6")
    lost = []
    with hold([Lease(store[0], run_id, "sweep s")], on_lost=lost.append) as holding:
        held = holding.leases[0]
        claim = {**held.claim, "holder": "another", "pid": 1, "since": lease_module._stamp(time.time())}
        store[1].log_param(run_id, f"ieskips.lease.{held.term + 1}", json.dumps(claim))  # as a taker would
        wait_for(lambda: lost, 10, every=0.05)
        with pytest.raises(LeaseLost, match="taken over by .* pid 1"):
            holding.check()
    assert _state(store, run_id)["holder"] == "another" and not _state(store, run_id)["released"]


@pytest.mark.unit
def test_leases_of_several_runs_are_all_taken_or_none(store):
    _, client, experiment = store
    first, second = (client.create_run(experiment).info.run_id for _ in range(2))
    other = _lease(store, second).acquire()
    with pytest.raises(LeaseHeld, match=f"pid {os.getpid()}"):
        hold([_lease(store, first), _lease(store, second)])
    assert _state(store, first)["released"] and _state(store, second)["holder"] == other.me["holder"]


@pytest.mark.unit
def test_two_drivers_creating_a_new_sweep_keep_one_parent_run(store, monkeypatch):
    _, client, experiment = store
    monkeypatch.setattr(lease_module, "SETTLE_S", 0.5)
    start, chosen = threading.Barrier(4), []

    def create():
        start.wait()
        chosen.append(sweep_parent(client, experiment, "fresh", {}))

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    parents = client.search_runs([experiment], "tags.`ieskips.sweep` = 'fresh' and tags.`ieskips.role` = 'sweep'")
    assert len(set(chosen)) == 1 and [r.info.run_id for r in parents] == chosen[:1]


@pytest.mark.unit
def test_a_bad_ttl_is_one_line(monkeypatch):
    monkeypatch.setenv("IESKIPS_LEASE_TTL", "soon")
    with pytest.raises(ConfigError, match="IESKIPS_LEASE_TTL='soon': give the lease's lifetime in seconds"):
        lease_ttl()


# --- two drivers, two evaluation jobs (integration) --------------------------------------------------------

TTL = {"IESKIPS_LEASE_TTL": "6"}
NEW_ATTACK = "{name: pgd, eps: 0.15, alpha: 0.03, steps: 20}"  # label pgd20; the sweep ran fgsm and pgd10


def _kill_for_good(proc):
    """SIGKILL a driver and every process it started: a dead driver, its lease left to expire (SIGTERM
    would let it release: Ray turns SIGTERM into SystemExit)."""
    family = descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in family:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=60)


def _error_lines(out):
    return [line for line in out.splitlines() if line.startswith("ieskips: error:")]


@pytest.fixture(scope="module")
def raced(tmp_path_factory):
    """Two `sweep run` of one new sweep started together; the one that runs is killed for good after
    an epoch of a trial; once its lease has expired a third `sweep run` takes over."""
    folder = tmp_path_factory.mktemp("leased")
    spec = write_spec(folder, name="leased", base={"epochs": 6}, grid={"ie_steps": [0, 1], "method": ["natural"]})
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    drivers = [cli("sweep", "run", str(spec), cwd=folder, env=ray_env(TTL), start_new_session=True) for _ in range(2)]
    try:
        wait_for(lambda: any(d.poll() is not None for d in drivers), 300)
        loser = next(d for d in drivers if d.poll() is not None)
        holder = next(d for d in drivers if d is not loser)
        loser_out = loser.communicate()[0]

        def running():
            client, _, trials = runs(uri, "ieskips-smoke")
            return next((r for r in trials if r.info.status == "RUNNING"
                         and client.get_metric_history(r.info.run_id, "train_loss")), None)

        victim = wait_for(running, 300, every=0.2)
        assert holder.poll() is None, holder.communicate()[0][-3000:]
        _kill_for_good(holder)
    finally:
        for driver in drivers:
            if driver.poll() is None:
                _kill_for_good(driver)
    client, parents, _ = runs(uri, "ieskips-smoke")
    dead = lease_state(client.get_run(parents[0].info.run_id))
    wait_for(lambda: time.time() > lease_module._seconds(dead["expires"]) + 0.5, 60)
    taker = cli("sweep", "run", str(spec), cwd=folder, env=ray_env(TTL))
    taker_out = taker.communicate(timeout=600)[0]
    return {"folder": folder, "spec": spec, "uri": uri, "loser": (loser.returncode, loser_out), "holder": holder,
            "victim": victim, "dead": dead, "taker": (taker.returncode, taker_out)}


@pytest.mark.integration
@pytest.mark.slow
def test_two_sweep_runs_at_once_one_runs_and_a_dead_one_is_taken_over(raced):
    code, out = raced["loser"]
    assert code == 2, out[-3000:]
    errors = _error_lines(out)
    assert len(errors) == 1 and "sweep leased is run by" in errors[0], out[-3000:]
    assert f"{HOST} pid {raced['holder'].pid}" in errors[0] and "last heartbeat" in errors[0]
    assert "sweep run" not in out.replace(errors[0], "")  # nothing else: no plan line, no trial
    assert raced["dead"]["pid"] == raced["holder"].pid and not raced["dead"]["released"]

    code, out = raced["taker"]
    assert code == 0, out[-3000:]
    assert "taking over the lease of" in out and f"pid {raced['holder'].pid}" in out
    client, parents, trials = runs(raced["uri"], "ieskips-smoke")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    tags = parents[0].data.tags
    assert json.loads(tags[TAKEN_OVER_TAG])["pid"] == raced["holder"].pid
    assert json.loads(tags[LEASE_TAG])["released"] and json.loads(tags[LEASE_TAG])["pid"] != raced["holder"].pid
    identities = [r.data.tags["ieskips.identity"] for r in trials]
    assert len(identities) == len(set(identities)) == 2, "one run per identity"
    assert all(r.info.status == "FINISHED" for r in trials)
    victim = raced["victim"]
    again = next(r for r in trials if r.data.tags["ieskips.identity"] == victim.data.tags["ieskips.identity"])
    assert again.info.run_id == victim.info.run_id  # the dead driver's RUNNING run, continued
    steps = [m.step for m in client.get_metric_history(again.info.run_id, "train_loss")]
    assert sorted(steps) == list(range(1, 7)), steps  # each epoch logged once


@pytest.mark.integration
@pytest.mark.slow
def test_two_evaluate_sweep_jobs_at_once_write_each_metric_once(raced):
    folder, spec, uri = raced["folder"], raced["spec"], raced["uri"]
    jobs = [cli("evaluate", "--sweep", str(spec), "--attack", NEW_ATTACK, cwd=folder, env=ray_env(TTL))
            for _ in range(2)]
    outs = [job.communicate(timeout=600)[0] for job in jobs]
    codes = [job.returncode for job in jobs]
    assert sorted(codes) in ([0, 0], [0, 2]), outs
    for job, code, out in zip(jobs, codes, outs):
        if code == 2:  # refused: names the job that holds the runs
            errors = _error_lines(out)
            winner = next(j for j in jobs if j is not job)
            assert len(errors) == 1 and "is being evaluated by" in errors[0] and f"pid {winner.pid}" in errors[0]
        if codes == [0, 0]:  # the other came after: nothing left to do
            assert any("0 to evaluate" in o or "by another job meanwhile" in o for o in outs), outs
    client, _, trials = runs(uri, "ieskips-smoke")
    assert len(trials) == 2
    for run in trials:
        assert len(client.get_metric_history(run.info.run_id, "final/robust_acc/pgd20")) == 1, run.info.run_name
        assert "ieskips.eval.pgd20" in run.data.tags
        assert json.loads(run.data.tags[LEASE_TAG])["released"]
