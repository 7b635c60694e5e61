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
    BatchRunner = Callable[..., list[Outcome]]  # batch.run_jobs


class Run(Protocol):
    """A run's bookkeeping, as the schedulers use it."""

    progress: Progress
    runner: Runner  # annotates one job: (annotator, job, progress, extractors) -> Outcome
    batch_runner: BatchRunner  # several at once: (annotator, jobs, progress, extractors)

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


EXTRACTOR_MIB = 400  # an extraction process's peak resident memory, with room: 148-154 MiB
# measured over 30 s 512x512 videos, one and seven in a row (dlib's models are most of it);
# longer, larger and several-face videos keep more per step


def available_mib() -> float | None:
    """Memory the system can give without swapping (Linux's MemAvailable), MiB; None where it
    is not known."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def extraction_processes(jobs: int, cores: int | None = None,
                         memory_mib: float | None = None) -> int:
    """How many extraction processes feed the one model: ``jobs``, but no more than the cores
    leave beside the model's process (one process per core, one core kept for the model and
    the writing) and than the memory holds (``EXTRACTOR_MIB`` each, in 80% of what is
    available); at least one."""
    cores = cores if cores is not None else (os.cpu_count() or 1)
    memory_mib = memory_mib if memory_mib is not None else available_mib()
    by_memory = int(0.8 * memory_mib // EXTRACTOR_MIB) if memory_mib is not None else jobs
    return max(1, min(jobs, cores - 1, by_memory))


def feeding(todo: list[Job], annotator: Annotator, processes: int, run: Run,
            begun: Extractors | None = None) -> None:
    """``todo`` with ``processes`` extraction processes (``extractors.Extractors``: decoding,
    openSMILE, face tracking; no torch, no model) feeding this process's one model: while the
    model predicts and writes a file, the next ones are being extracted (a folder pipelined on
    the CPU; on a GPU, the cores feed one model). Files whose features are ready together go
    through the model together (``batch.run_jobs``: the batch grows with what is queued). A
    file's extraction is begun ``processes + 1`` files ahead, so every process has the next
    file waiting; ``begun``: a pool whose first files were begun already (before the model
    loaded). A process that dies (killed, out of memory) takes the files it held with it: the
    processes are restarted and each of those files is tried once more before it is reported
    as failed."""
    import torch

    queue = list(enumerate(todo))
    started: dict[Future, tuple[int, Job, Extractors]] = {}
    retried: set[int] = set()
    own_threads = torch.get_num_threads()
    torch.set_num_threads(model_threads(processes))
    feeder = _Feeder(annotator, processes, begun)

    def process(ready: list[tuple[int, Job, Extractors | None]]) -> None:
        if len({id(pool) for _, _, pool in ready}) > 1:  # (files of a pool since restarted:
            for item in ready:  # each alone)
                process([item])
            return
        for i, job, _ in ready:
            run.progress.start(job, i, len(todo))
        jobs = [job for _, job, _ in ready]
        for job, outcome in zip(jobs, run.batch_runner(annotator, jobs, run.progress,
                                                       ready[0][2])):
            run.finish(job, outcome)

    try:
        while queue or started:
            while queue and len(started) < processes + 1:
                i, job = queue.pop(0)
                future = feeder.begin(job)
                if future is None:  # unreadable: annotate says why (at once)
                    process([(i, job, None)])
                    continue
                started[future] = (i, job, feeder.pool)
            if not started:
                continue
            wait(started, return_when=FIRST_COMPLETED)
            ready: list[tuple[int, Job, Extractors | None]] = []
            for future in [f for f in started if f.done()]:  # (in the order begun)
                i, job, pool = started.pop(future)
                if not feeder.died(future, pool):
                    ready.append((i, job, pool))  # its features are claimed from the pool
                elif i not in retried:
                    retried.add(i)
                    queue.insert(0, (i, job))
                else:
                    run.progress.start(job, i, len(todo))
                    run.fail(job, f"{job.source}: the extraction process died (killed, or out "
                                  f"of memory)")
            if ready:
                process(ready)
    finally:
        feeder.pool.stop()
        torch.set_num_threads(own_threads)


class _Feeder:
    """The extraction processes of ``feeding``, restarted when one of them dies (the pool is
    then broken for good)."""

    def __init__(self, annotator: Annotator, processes: int, pool: Extractors | None = None):
        from .extractors import Extractors

        self.annotator, self.processes = annotator, processes
        self.pool = pool if pool is not None else Extractors(processes)

    def restart(self) -> None:
        from .extractors import Extractors

        self.pool.stop()
        self.pool = Extractors(self.processes)

    def begin(self, job: Job) -> Future | None:
        """The future of ``job``'s extraction (begun already, or now); None if the file cannot
        even be probed."""
        from concurrent.futures.process import BrokenProcessPool

        from .extractors import probed

        a = self.annotator
        earlier = self.pool.begun(job.source, a.request)
        if earlier is not None:
            return earlier
        info = probed(job.source)
        if info is None:
            return None
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
