"""How a run's files are spread over processes (chosen in ``batch.annotate_files``): one file
after the other here (``one_by_one``), N extraction processes feeding this process's one model
(``feeding``), or a model in this process and in each of N - 1 workers (``model_per_worker``).
The processes are workers.py's; each file's outcome goes to the run's bookkeeping (a ``Run``:
``batch._Run``), which records it."""
from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import TYPE_CHECKING, Callable, Protocol

from . import workers

if TYPE_CHECKING:
    from .batch import Job, Outcome, Progress
    from .checkpoint import CheckpointFile
    from .extractors import Extractors
    from .pipeline import Annotator
    from .settings import AnnotatorSettings

    Runner = Callable[..., Outcome]  # batch.run_job


class Run(Protocol):
    """A run's bookkeeping, as the schedulers use it."""

    progress: Progress
    runner: Runner  # annotates one job: (annotator, job, progress, extractors) -> Outcome

    def finish(self, job: Job, outcome: Outcome) -> None: ...

    def fail(self, job: Job, reason: str) -> None: ...


def worker_threads(jobs: int) -> int:
    """Torch threads per worker so that ``jobs`` workers share the machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def model_threads(extractors: int) -> int:
    """Torch threads for the model beside ``extractors`` extraction processes: the cores they
    leave (at least one)."""
    return max(1, (os.cpu_count() or 1) - extractors)


def one_by_one(todo: list[Job], annotator: Annotator, run: Run,
               begun: Extractors | None = None) -> None:
    """``todo`` one file after the other in this process (a file's features taken from
    ``begun`` when they were begun there)."""
    for i, job in enumerate(todo):
        run.progress.start(job, i, len(todo))
        run.finish(job, run.runner(annotator, job, run.progress, begun))


def feeding(todo: list[Job], annotator: Annotator, jobs: int, run: Run) -> None:
    """``todo`` with ``jobs`` extraction processes (``extractors.Extractors``: decoding,
    openSMILE, face tracking; no torch, no model) feeding this process's one model, which
    predicts and writes each file as its features arrive (on a GPU: N CPU processes feed one
    model). A file's extraction is begun ``jobs + 1`` files ahead, so every process has the
    next file waiting. A process that dies (killed, out of memory) takes the files it held with
    it: the processes are restarted and each of those files is tried once more before it is
    reported as failed."""
    import torch

    queue = list(enumerate(todo))
    begun: dict[Future, tuple[int, Job, Extractors]] = {}
    retried: set[int] = set()
    own_threads = torch.get_num_threads()
    torch.set_num_threads(model_threads(jobs))
    feeder = _Feeder(annotator, jobs)

    def process(i: int, job: Job, pool: Extractors | None) -> None:
        run.progress.start(job, i, len(todo))
        run.finish(job, run.runner(annotator, job, run.progress, pool))

    try:
        while queue or begun:
            while queue and len(begun) < jobs + 1:
                i, job = queue.pop(0)
                future = feeder.begin(job)
                if future is None:  # unreadable: annotate says why (at once)
                    process(i, job, None)
                    continue
                begun[future] = (i, job, feeder.pool)
            if not begun:
                continue
            for future in wait(begun, return_when=FIRST_COMPLETED)[0]:
                i, job, pool = begun.pop(future)
                if not feeder.died(future, pool):
                    process(i, job, pool)  # its features are claimed from the extraction
                elif i not in retried:
                    retried.add(i)
                    queue.insert(0, (i, job))
                else:
                    run.progress.start(job, i, len(todo))
                    run.fail(job, f"{job.source}: the extraction process died (killed, or out "
                                  f"of memory)")
    finally:
        feeder.pool.stop()
        torch.set_num_threads(own_threads)


class _Feeder:
    """The extraction processes of ``feeding``, restarted when one of them dies (the pool is
    then broken for good)."""

    def __init__(self, annotator: Annotator, processes: int):
        from .extractors import Extractors

        self.annotator, self.processes = annotator, processes
        self.pool = Extractors(processes)

    def restart(self) -> None:
        from .extractors import Extractors

        self.pool.stop()
        self.pool = Extractors(self.processes)

    def begin(self, job: Job) -> Future | None:
        """The future of ``job``'s extraction; None if the file cannot even be probed."""
        from concurrent.futures.process import BrokenProcessPool

        from .demux import probe

        try:
            info = probe(job.source)
        except Exception:
            return None
        a = self.annotator
        try:
            return self.pool.begin(info, a.request, a.faces_device)
        except BrokenProcessPool:  # a process died since the last file was begun
            self.restart()
            return self.pool.begin(info, a.request, a.faces_device)

    def died(self, future: Future, pool: Extractors) -> bool:
        """Whether ``future``'s process died (the pool is then restarted, once)."""
        from concurrent.futures.process import BrokenProcessPool

        if not isinstance(future.exception(), BrokenProcessPool):
            return False
        if pool is self.pool:
            self.restart()
        return True


_WORKER: dict = {}  # a --jobs worker's annotator and job runner


def _start_worker(checkpoint: CheckpointFile, settings: AnnotatorSettings, threads: int,
                  runner: Runner) -> None:
    """A --jobs worker process: its own model (from the checkpoint's bytes, read once by the
    parent) and face backend, ``threads`` for torch."""
    import torch

    from .pipeline import Annotator

    torch.set_num_threads(threads)
    _WORKER["annotator"] = Annotator(checkpoint, settings)
    _WORKER["runner"] = runner


def _work(job: Job) -> Outcome:
    return _WORKER["runner"](_WORKER["annotator"], job)


def model_per_worker(todo: list[Job], annotator: Annotator, jobs: int, run: Run) -> None:
    """``todo`` over ``jobs`` annotators: this process's own (already loaded) and ``jobs - 1``
    spawned worker processes (each loads the model once), all taking from one queue."""
    import torch

    source = annotator.checkpoint.source
    if source is None:
        raise ValueError("jobs > 1 needs a checkpoint loaded from a file")
    threads = worker_threads(jobs)
    own_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    pool = workers.start_pool(jobs - 1, _start_worker,
                              (source, annotator.settings, threads, run.runner))
    queue = list(enumerate(todo))
    pending: dict[Future, Job] = {}

    def collect(block: bool) -> None:
        done = wait(pending, return_when=FIRST_COMPLETED)[0] if block else \
            [f for f in pending if f.done()]
        for future in done:
            job = pending.pop(future)
            try:
                outcome = future.result()
            except Exception as err:  # the worker died (killed, out of memory)
                run.fail(job, f"{job.source}: the worker process failed ({type(err).__name__})")
                continue
            run.finish(job, outcome)

    try:
        while queue or pending:
            while queue and len(pending) < jobs - 1:  # one queued per worker, no more
                i, job = queue.pop(0)
                run.progress.start(job, i, len(todo))
                pending[pool.submit(_work, job)] = job
            if queue:  # this process annotates one file meanwhile
                i, job = queue.pop(0)
                run.progress.start(job, i, len(todo))
                run.finish(job, run.runner(annotator, job))
                collect(block=False)
            elif pending:
                collect(block=True)
    except BaseException:
        workers.end_pool(pool)
        raise
    finally:
        torch.set_num_threads(own_threads)
    workers.finish_pool(pool)
