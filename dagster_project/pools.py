"""The concurrency pools of the rate-limited API steps and their limits. Dagster keeps a pool's
limit in the instance's storage, not in dagster.yaml, so `refinery` sets it from the settings
whenever it uses the instance (and `refinery pools` does it on its own, e.g. in a deployment job).
Also: the runs of `refinery` processes that died, and what a waiting run waits for."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Collection, Mapping

import dagster as dg

from .core.settings import Settings

EMBEDDING_POOL = "embedding_api"  # the embeddings steps
LLM_POOL = "llm_api"  # the refined_documents steps


def pool_limits(settings: Settings) -> dict[str, int]:
    """Steps of each pool that may run at once across all runs (EMBEDDING_POOL_LIMIT, LLM_POOL_LIMIT)."""
    return {EMBEDDING_POOL: settings.embedding_pool_limit, LLM_POOL: settings.llm_pool_limit}


def apply_pool_limits(instance: dg.DagsterInstance, settings: Settings) -> dict[str, int]:
    """Set each pool's limit in the instance where it differs; returns the limits."""
    limits = pool_limits(settings)
    for pool, limit in limits.items():
        _set_limit(instance.event_log_storage, pool, limit)
    return limits


def _set_limit(storage, pool: str, limit: int, attempts: int = 3) -> None:
    for attempt in range(attempts):
        if storage.get_concurrency_info(pool).slot_count == limit:
            return
        try:
            storage.set_concurrency_slots(pool, limit)
            return
        except Exception:
            # Two processes creating the pool's row at once: Dagster's upsert is not atomic, so
            # one gets a unique violation. Look again (the other may have set the same limit).
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def pool_usage(instance: dg.DagsterInstance) -> dict[str, dict]:
    """Limit, steps holding a slot and steps waiting, per pool of this project."""
    usage = {}
    for pool in (EMBEDDING_POOL, LLM_POOL):
        info = instance.event_log_storage.get_concurrency_info(pool)
        usage[pool] = {"limit": info.slot_count, "running": info.active_slot_count, "waiting": info.pending_step_count}
    return usage


# ------------------------------------------------------------------ runs of dead processes
#
# `refinery ingest/refine/snapshot` run their jobs in process: a run's only worker is the CLI
# process itself. Killed (SIGKILL, OOM, power loss), it leaves its run STARTED and its pool
# slots claimed forever, and every later step of that pool waits for them. Each such run is
# tagged with its process, so a later `refinery` can prove the process is gone and end the run.

PID_TAG = "refinery/pid"
HOST_TAG = "refinery/host"
PROCESS_STARTED_TAG = "refinery/process_started"  # tells a reused pid from the original process


def process_tags() -> dict[str, str]:
    """Tags naming this process, for the runs it executes in process."""
    import psutil

    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname(),
            PROCESS_STARTED_TAG: f"{psutil.Process().create_time():.2f}"}


LAUNCHER_TAG = "refinery/launcher"  # host:pid:start time of the process that launched a daemon run


def launcher_tags() -> dict[str, str]:
    """The tag naming this process as a run's launcher (launcher.RefineryRunLauncher)."""
    import psutil

    return {LAUNCHER_TAG: f"{socket.gethostname()}:{os.getpid()}:{psutil.Process().create_time():.2f}"}


def _launcher(tags: Mapping[str, str]) -> tuple[str, str, str]:
    """(host, pid, start time) of the process a run's `refinery/launcher` names; '' where absent."""
    host, _, rest = tags.get(LAUNCHER_TAG, "").partition(":")
    pid, _, started = rest.partition(":")
    return host, pid, started


def _launcher_alive(tags: Mapping[str, str]) -> bool | None:
    """Whether the process that launched a run still runs; None when it cannot be known here."""
    host, pid, started = _launcher(tags)
    if host != socket.gethostname() or not pid:
        return None
    return process_alive({PID_TAG: pid, HOST_TAG: host, PROCESS_STARTED_TAG: started})


def run_is_dead(tags: Mapping[str, str]) -> bool:
    """A run in progress whose process is gone: the process named by its `refinery/pid` (the
    command, or the daemon run's worker), or, before its worker tagged it, its launcher."""
    if PID_TAG in tags:
        return process_alive(tags) is False
    return _launcher_alive(tags) is False


def tag_run_worker(instance: dg.DagsterInstance, run: dg.DagsterRun | None) -> None:
    """Tag a run the daemon launched with its run worker's process, once (its first step), so
    that a later `refinery` (`refinery dev` starting again, or the daemon's dead-run sensor) can
    prove the worker gone and end the run: killed with `refinery dev` (or by the OOM killer), it
    stayed STARTED forever, and its collection's later runs waited behind it in the queue.
    Steps of the multiprocess executor (the daemon's runs) run in processes the worker spawned:
    the worker is their parent. `refinery`'s in-process runs are tagged before they start; steps
    on Celery or Kubernetes workers are not tagged (their worker is elsewhere, or pooled)."""
    import multiprocessing

    import psutil

    parent = multiprocessing.parent_process()
    if run is None or PID_TAG in run.tags or parent is None:
        return
    try:
        worker = psutil.Process(parent.pid)
        tags = {PID_TAG: str(worker.pid), HOST_TAG: socket.gethostname(),
                PROCESS_STARTED_TAG: f"{worker.create_time():.2f}"}
    except psutil.Error:
        return
    instance.add_run_tags(run.run_id, tags)


def process_alive(tags: Mapping[str, str]) -> bool | None:
    """Whether the process named by a run's tags still runs; None when it cannot be known here
    (another host, or a run not started by `refinery`)."""
    import psutil

    if PID_TAG not in tags or tags.get(HOST_TAG) != socket.gethostname():
        return None
    try:
        proc = psutil.Process(int(tags[PID_TAG]))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        started = float(tags.get(PROCESS_STARTED_TAG, "0"))
        return not started or abs(proc.create_time() - started) < 1.0
    except (psutil.NoSuchProcess, ValueError):
        return False
    except psutil.AccessDenied:
        return True


IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


def release_dead_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """Mark failed the in-progress runs whose `refinery` process is dead, and free the pool
    slots of every run that has ended (however it ended); returns the runs marked failed."""
    from dagster._core.storage.dagster_run import FINISHED_STATUSES

    dead = [run for run in instance.get_runs(filters=dg.RunsFilter(statuses=IN_PROGRESS)) if run_is_dead(run.tags)]
    for run in dead:
        instance.report_run_failed(run, message=f"The process that ran it ({dead_process(run.tags)}) died without "
                                                "ending it; marked failed by a later refinery.")
    storage = instance.event_log_storage
    holders = storage.get_concurrency_run_ids()
    if holders:
        for run in instance.get_runs(filters=dg.RunsFilter(run_ids=list(holders))):
            if run.status in FINISHED_STATUSES:
                storage.free_concurrency_slots_for_run(run.run_id)
        # A run deleted from the UI while it held slots: nothing else frees them.
        for run_id in holders - {r.run_id for r in instance.get_runs(filters=dg.RunsFilter(run_ids=list(holders)))}:
            storage.free_concurrency_slots_for_run(run_id)
    return dead


def dead_process(tags: Mapping[str, str]) -> str:
    """The process a dead run names, for messages: "pid 123" or "launcher pid 123"."""
    if PID_TAG in tags:
        return f"pid {tags[PID_TAG]}"
    return f"launcher pid {_launcher(tags)[1]}"


def dead_run_line(run: dg.DagsterRun, process: str = "a process") -> str:
    """One line for a run release_dead_runs marked failed, as `refinery` and `refinery dev` print it."""
    partition = f", {run.tags['dagster/partition']}" if "dagster/partition" in run.tags else ""
    return (f"run {run.run_id[:8]} ({run.job_name}{partition}) was left in progress by {process} that died "
            f"({dead_process(run.tags)}): marked failed")


def waiting_for(instance: dg.DagsterInstance, run_id: str, pools: Collection[str] = (EMBEDDING_POOL, LLM_POOL)
                ) -> str | None:
    """What the run's steps wait for, as one line (the pool, its limit, the runs holding it and
    their processes), or None when no step of the run waits for a slot of `pools` (the pools of
    its job: asked every second while it runs, so in one round trip)."""
    storage = instance.event_log_storage
    for pool, info in storage.get_concurrency_infos(sorted(pools)).items():
        if run_id not in info.pending_run_ids:
            continue
        holders = []
        for holder in sorted(info.active_run_ids):
            run = instance.get_run_by_id(holder)
            who = f"run {holder[:8]}"
            if run is not None:
                who += f" ({run.status.value.lower()}"
                if PID_TAG in run.tags:
                    who += f", pid {run.tags[PID_TAG]} on {run.tags.get(HOST_TAG, '?')}"
                who += ")"
            holders.append(who)
        return (f"waiting for a slot in pool {pool} (limit {info.slot_count}), held by "
                + (", ".join(holders) or "no run") + "; Ctrl-C stops")
    return None
