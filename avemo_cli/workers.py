"""Every process pool of avemo, started, stopped and protected here: annotate's extraction
processes (extractors.py) and ``--jobs`` workers (schedule.py), ``avemo extract --jobs`` and
training's feature extraction (cache.py), and the recipes' decoding (``spawn_map``).

What every pool gets:

- processes are spawned (no fork after torch or OpenMP have started threads), all at once, with
  Ctrl-C and SIGTERM ignored while they start: a stop sent to the whole process group (a
  terminal's Ctrl-C, a scheduler's SIGTERM) then reaches only the process that started them,
  which ends them (``end_pool``);
- a process of ours ignores those stops for good and ends when its parent is gone (killed with
  SIGKILL): no orphan keeps working or holding memory;
- ``end_all``: every pool still running is ended when the command ends, whatever the reason;
- ``stop_signals``: SIGTERM (what SLURM, Kubernetes and AWS Batch send on a timeout or a
  preemption) raised in the main thread as ``Terminated``, a ``KeyboardInterrupt``, so that
  every path that cleans up after Ctrl-C cleans up after it too; the CLI exits with 143.

Nothing here imports torch.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

STOPS = (signal.SIGINT, signal.SIGTERM)

_LIVE: list[ProcessPoolExecutor] = []  # pools not yet ended (``end_all``)


class Terminated(KeyboardInterrupt):
    """The process was sent SIGTERM (``stop_signals``): stop as for Ctrl-C, exit status 143."""


def stop_signals() -> None:
    """SIGTERM raises ``Terminated`` in the main thread from now on (the console entry)."""
    def terminated(signum, frame):
        raise Terminated()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminated)


def start_pool(processes: int, initializer: Callable[..., None] | None = None,
               initargs: tuple = ()) -> ProcessPoolExecutor:
    """A pool of ``processes`` spawned processes, all started now (later submissions start
    nothing, so a stop while the work runs always reaches this process); each runs
    ``child_start`` and then ``initializer(*initargs)``."""
    import multiprocessing as mp

    _quiet_tracker()
    pool = ProcessPoolExecutor(processes, mp.get_context("spawn"), initializer=_child,
                               initargs=(os.getpid(), initializer, initargs))
    with stops_ignored():
        launch = getattr(pool, "_launch_processes", None)  # (CPython's; else on first use)
        if launch is not None:
            launch()
    _LIVE.append(pool)
    return pool


def _quiet_tracker() -> None:
    """Start multiprocessing's resource tracker (the process that unlinks a pool's semaphores
    if the pool's owner could not) with its stderr on /dev/null. It still cleans up; but after a
    stop, when processes killed mid-work left semaphores it was told of, it would print Python
    warnings ("There appear to be N leaked semaphore objects") under avemo's one line."""
    from multiprocessing import resource_tracker

    tracker = resource_tracker._resource_tracker
    if getattr(tracker, "_fd", None) is not None or not hasattr(os, "dup2"):
        return  # running already (or not a POSIX tracker)
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            tracker.ensure_running()
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def end_pool(pool: ProcessPoolExecutor) -> None:
    """End a pool at once: its processes killed (work in them dropped), waited for, and its
    queues closed, so that nothing is left running or leaked."""
    _quiet_helpers()
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for proc in processes:
        proc.kill()  # (they ignore SIGTERM)
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        proc.join(5)
    manager = getattr(pool, "_executor_manager_thread", None)
    if manager is not None:  # its last use of the queues done before they are finalized
        manager.join(5)
    if pool in _LIVE:
        _LIVE.remove(pool)


def _quiet_helpers() -> None:
    """From now on, an error in a pool's helper threads (its manager, its queues' feeders) is
    not printed: a pool ended at once leaves them reading pipes that are closing, and the
    traceback one may print as the command exits is not the user's business."""
    from concurrent.futures import process

    previous = threading.excepthook
    if getattr(previous, "_avemo_quiet", False):
        return
    manager = getattr(process, "_ExecutorManagerThread", ())

    def hook(args):
        if isinstance(args.thread, manager) or (
                args.thread is not None and args.thread.name == "QueueFeederThread"):
            return
        previous(args)

    hook._avemo_quiet = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def finish_pool(pool: ProcessPoolExecutor) -> None:
    """End a pool whose work is done: its processes leave when their queue is empty."""
    pool.shutdown(wait=True)
    if pool in _LIVE:
        _LIVE.remove(pool)


def live() -> list[ProcessPoolExecutor]:
    """The pools not yet ended."""
    return list(_LIVE)


def end_all() -> None:
    """End every pool still running (the command is ending, perhaps on an error or a stop
    before their work was taken): none outlives it holding its output streams."""
    for pool in list(_LIVE):
        end_pool(pool)


@contextmanager
def stops_ignored() -> Iterator[None]:
    """Ctrl-C and SIGTERM ignored in this process while the block runs (it starts processes):
    a process started then inherits the ignored signals through exec, so a stop sent to the
    process group finds none of ours half-started. Only the main thread can change them;
    elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in STOPS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def child_start(parent: int) -> None:
    """The first thing a process of ours does: it leaves Ctrl-C and SIGTERM to the process
    that started it, and it ends when that process is gone (a parent killed with SIGKILL
    leaves no orphan working on or holding memory)."""
    for s in STOPS:
        signal.signal(s, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        import ctypes

        try:  # the kernel sends SIGKILL when the parent dies
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # it died before that was set
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="avemo-parent-watch",
                     daemon=True).start()  # (where the kernel has no parent-death signal)


def _child(parent: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    child_start(parent)
    if initializer is not None:
        initializer(*initargs)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def spawn_map(fn: Callable[[Any], Any], items: Iterable, jobs: int = 1,
              chunksize: int = 1) -> Iterator:
    """``fn`` over ``items`` in ``jobs`` processes of ours, results in order as they come; in
    this process when ``jobs`` <= 1 or there is one item. A stop (or an error) ends the
    processes at once."""
    items = list(items)
    if jobs <= 1 or len(items) <= 1:
        yield from map(fn, items)
        return
    pool = start_pool(min(jobs, len(items)))
    try:
        yield from pool.map(fn, items, chunksize=chunksize)
    except BaseException:
        end_pool(pool)
        raise
    finally:
        if pool in _LIVE:
            finish_pool(pool)
