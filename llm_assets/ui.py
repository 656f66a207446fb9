"""``python -m llm_assets.ui [--grace S] [dagster dev options]``: ``dagster dev`` that stops everything it started.

``make ui`` runs this. ``dagster dev`` stops its webserver and daemon when it is interrupted, but SIGTERM to its PID
(a script, a service manager) leaves its code server, run workers and training children running; only Ctrl-C in a
terminal reaches them, because the terminal interrupts the whole process group. So this starts ``dagster dev`` in a
session of its own and, on SIGINT, SIGTERM or SIGHUP, does what Ctrl-C does: interrupts every process of that session
and every descendant (torchrun puts its workers in sessions of their own; on Linux orphans are re-parented to this
process, so none escapes), which lets a run worker mark its run failed. Whatever is left after ``--grace`` seconds
(a second signal: at once) is killed, and a run whose worker was killed is marked failed, so none stays STARTED.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import os
import signal
import subprocess
import sys
import threading
import time

import psutil

GRACE_SECONDS = 10.0  # interrupt, then kill: the whole shutdown fits in 15 s
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
ACTIVE_RUN_STATUSES = ("STARTING", "STARTED", "CANCELING")


def adopt_orphans() -> None:
    """Become the parent of every orphaned descendant (Linux), so a process whose parent exits first is still ours."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def descendants(keep: int) -> list[psutil.Process]:
    """Every live process this one started, directly or not. Orphans it adopted are reaped once they exit (``keep``,
    the child it waits for itself, is not)."""
    alive = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
            elif proc.pid != keep and proc.ppid() == os.getpid():
                os.waitpid(proc.pid, os.WNOHANG)
        except (psutil.NoSuchProcess, ChildProcessError):
            pass
    return alive


def signal_all(procs: list[psutil.Process], group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)  # the session's processes, including any started since the last look
    except ProcessLookupError:
        pass
    for proc in procs:
        try:
            proc.send_signal(sig)  # psutil checks the PID still names the same process
        except psutil.NoSuchProcess:
            pass


class Supervisor:
    def __init__(self, command: list[str], grace: float):
        self.command, self.grace = command, grace
        self.deadline: float | None = None
        self.stopping = threading.Event()
        self.seen: dict[int, str] = {}  # pid -> command line of every process started under dagster dev

    def on_signal(self, signum: int, _frame) -> None:
        now = time.monotonic()
        if self.deadline is None:  # import now what marking runs needs, while the processes stop
            threading.Thread(target=importlib.import_module, args=("dagster",), daemon=True).start()
        self.deadline = now if self.deadline is not None else now + self.grace
        self.stopping.set()
        print(f"llm_assets.ui: {signal.Signals(signum).name}: stopping dagster dev"
              + (f" (killing what is left after {self.grace:g} s)" if self.deadline > now else " now"), flush=True)

    def run(self) -> int:
        adopt_orphans()
        for sig in STOP_SIGNALS:
            signal.signal(sig, self.on_signal)
        dev = subprocess.Popen(self.command, start_new_session=True)
        while not self.stopping.wait(2) and dev.poll() is None:
            descendants(keep=dev.pid)  # reaps adopted orphans
        stopped = self.deadline is not None
        if not stopped:  # dagster dev exited on its own: what it left behind goes too
            self.deadline = time.monotonic() + self.grace
        interrupted = killed = False
        while procs := descendants(keep=dev.pid):
            self.remember(procs)
            if time.monotonic() >= self.deadline:
                if not killed:
                    names = sorted({self.seen[p.pid][:120] for p in procs if p.pid in self.seen})
                    print(f"llm_assets.ui: killing {len(procs)} processes still running: {'; '.join(names)}", flush=True)
                signal_all(procs, dev.pid, signal.SIGKILL)
                killed = True
            elif not interrupted:
                signal_all(procs, dev.pid, signal.SIGINT)
                interrupted = True
            time.sleep(0.1)
        returncode = dev.wait()
        fail_orphaned_runs(set(self.seen))
        if stopped:
            return 0  # stopped as asked
        return returncode if returncode >= 0 else 128 - returncode

    def remember(self, procs: list[psutil.Process]) -> None:
        for proc in procs:
            if proc.pid not in self.seen:
                try:
                    self.seen[proc.pid] = " ".join(proc.cmdline())
                except psutil.NoSuchProcess:
                    pass


def fail_orphaned_runs(pids: set[int]) -> list[str]:
    """Mark failed every run still in progress whose run worker was one of ``pids`` (all gone by now).

    A run worker marks its own run failed when interrupted; one that was killed cannot, and Dagster's default run
    launcher has no health check that would notice, so the run would show STARTED forever.
    """
    if not pids or not os.environ.get("DAGSTER_HOME"):
        return []  # without DAGSTER_HOME dagster dev used a temporary instance, gone with it
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    failed = []
    with DagsterInstance.get() as instance:
        statuses = [DagsterRunStatus(s) for s in ACTIVE_RUN_STATUSES]
        for record in instance.get_run_records(RunsFilter(statuses=statuses)):
            run = record.dagster_run
            if run_worker_pid(instance, run.run_id) in pids:
                instance.report_run_failed(run, "dagster dev was stopped while this run was in progress and its run "
                                                "worker had to be killed; materialize again to rerun it")
                failed.append(run.run_id)
                print(f"llm_assets.ui: marked run {run.run_id} failed (its run worker was killed)", flush=True)
    return failed


def run_worker_pid(instance, run_id: str) -> int | None:
    """The PID in the run's "Started process for run" engine event (Dagster's default run launcher writes it)."""
    from dagster import DagsterEventType

    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        data = entry.dagster_event.event_specific_data if entry.dagster_event else None
        pid = getattr(data, "metadata", {}).get("pid") if data else None
        if pid is not None:
            return int(pid.value)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llm_assets.ui", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    parser.add_argument("--help", action="help", help="Show this help (dagster dev's: dagster dev --help).")  # -h is the host
    parser.add_argument("--grace", type=float, default=GRACE_SECONDS,
                        help=f"Seconds between interrupting and killing what is left (default {GRACE_SECONDS:g}).")
    args, dev_args = parser.parse_known_args(argv)
    return Supervisor([sys.executable, "-m", "dagster", "dev", *dev_args], args.grace).run()


if __name__ == "__main__":
    sys.exit(main())
