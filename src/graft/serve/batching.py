"""Dynamic batching across requests: requests wait in a bounded asyncio queue; one task gathers
them into a batch of up to `max_batch` inputs (waiting at most `max_wait_s` for more after the
first) and runs the model on them in one worker thread, off the event loop, so `/health` and new
connections are answered while a batch runs. A request is never split across batches.

PyTorch's CPU threads belong to that worker alone (`torch_threads_for_worker`): with OpenMP, each
thread that runs an op gets a team of its own, and once libgomp's threads outnumber the cores it
stops spinning between parallel regions, so every small op waits on a futex. Loading the model on
a main thread of 2 threads and serving from a worker of 2 ran MiniLM batches at ~0.7x (AMX bf16,
2 cores; ~0.9x in fp32); a main thread of 1 thread keeps the worker at full speed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

SINGLE = 1  # PyTorch threads left to the event loop's thread: it runs no model
WORKER_NICENESS = 10  # Linux: the event loop's thread gets about 9x the model's CPU share when both wait


class Overloaded(Exception):
    """The queue is full (or the server is stopping): answer 503 at once, never wait."""


class Slot:
    """A place in the queue held for a request while its body is read and decoded, so that a
    request let in is never refused after that work, and one that cannot be is refused first."""

    def __init__(self, batcher: Batcher) -> None:
        self.batcher, self.held = batcher, True

    def release(self) -> None:
        if self.held:
            self.batcher.reading -= 1
            self.held = False


@dataclass
class Job:
    """One request's inputs and the future its answer (one output per input) resolves."""

    inputs: list[Any]
    future: asyncio.Future = field(repr=False)


def torch_threads_for_worker() -> int:
    """PyTorch's CPU thread count, for the batcher's worker; the calling thread (the event loop's,
    which loads the model) keeps one, so only the worker's OpenMP team is on the cores. Any other
    thread of the server must not run PyTorch ops either (uploads are decoded with Pillow)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(SINGLE)
    return threads


def start_worker(threads: int) -> None:
    """The batcher's worker thread: PyTorch's threads, and a lower priority than the event loop's
    thread (its OpenMP or ONNX Runtime threads, started from it, inherit it), so that under load
    the loop still answers /health and refusals at once and the model takes the CPU it leaves."""
    restore_torch_threads(threads)
    with contextlib.suppress(AttributeError, OSError):  # not on every OS; never fails a server
        me = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, me, os.getpriority(os.PRIO_PROCESS, me) + WORKER_NICENESS)


def restore_torch_threads(threads: int) -> None:
    """The calling thread's PyTorch threads back to `threads` (also the worker's initializer)."""
    import torch

    torch.set_num_threads(threads)


class Batcher:
    """Gathers queued requests into batches and runs `run(inputs) -> outputs` in one thread (torch
    releases the GIL while it computes; one thread keeps batches from competing for the cores)."""

    def __init__(
        self,
        run: Callable[[list[Any]], Sequence[Any]],
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        on_batch: Callable[[int], None] = lambda size: None,
        torch_threads: int | None = None,
    ) -> None:
        self.run, self.max_batch, self.max_wait_s = run, max_batch, max_wait_s
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=max_queue)
        self.on_batch = on_batch
        # torch_threads: the worker's PyTorch CPU threads (None: as the process has them)
        setup: dict[str, Any] = {}
        if torch_threads is not None:
            setup = {"initializer": start_worker, "initargs": (torch_threads,)}
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="graft-serve", **setup)
        self.task: asyncio.Task | None = None
        self.closing = False
        self.pending: set[asyncio.Future] = set()  # accepted requests not answered yet
        self._held: Job | None = None  # a request that did not fit the last batch: it starts the next
        self.reading = 0  # requests holding a Slot: let in, their bodies still being read

    @property
    def full(self) -> bool:
        """Requests waiting, with those let in and still being read, fill the queue."""
        return self.queue.qsize() + self.reading >= self.queue.maxsize

    def reserve(self) -> Slot:
        """A place for a request about to be read: Overloaded at once when there is none."""
        if self.closing:
            raise Overloaded("the server is stopping")
        if self.full:
            raise Overloaded(f"{self.queue.maxsize} requests are waiting already")
        self.reading += 1
        return Slot(self)

    @property
    def depth(self) -> int:
        return self.queue.qsize() + (self._held is not None)

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._serve_forever())

    def submit(self, inputs: list[Any], slot: Slot | None = None) -> asyncio.Future:
        """Queue one request's inputs (in the `slot` it holds, if any); its future gets their
        outputs. Overloaded when full or stopping."""
        if slot is not None:
            slot.release()  # no await from here to the put: the place cannot be taken meanwhile
        if self.closing:
            raise Overloaded("the server is stopping")
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(Job(list(inputs), future))
        except asyncio.QueueFull:
            raise Overloaded(f"{self.queue.maxsize} requests are waiting already") from None
        self.pending.add(future)
        future.add_done_callback(self.pending.discard)
        return future

    async def compute(self, inputs: list[Any]) -> list[Any]:
        """Run the model on `inputs` in the worker thread (the warm-up batch uses it)."""
        return list(await asyncio.get_running_loop().run_in_executor(self.executor, self.run, inputs))

    async def _serve_forever(self) -> None:
        while True:
            jobs = await self._gather()
            await self._run_batch(jobs)

    async def _gather(self) -> list[Job]:
        """The next batch: the first request, then those that arrive within max_wait_s, up to
        max_batch inputs; requests that gave up (timed out) are dropped here."""
        first = self._held or await self.queue.get()
        self._held = None
        jobs, size = [first], len(first.inputs)
        deadline = asyncio.get_running_loop().time() + self.max_wait_s
        while size < self.max_batch:
            try:
                job = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), left)
                except TimeoutError:
                    break
            if size + len(job.inputs) > self.max_batch:
                self._held = job
                break
            jobs.append(job)
            size += len(job.inputs)
        return [job for job in jobs if not job.future.done()]

    async def _run_batch(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        inputs = [item for job in jobs for item in job.inputs]
        try:
            outputs = await self.compute(inputs)
        except Exception as err:  # each waiting request hears of it; the server keeps serving
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(err)
            return
        self.on_batch(len(inputs))
        start = 0
        for job in jobs:
            if not job.future.done():
                job.future.set_result(outputs[start : start + len(job.inputs)])
            start += len(job.inputs)

    async def drain(self, timeout_s: float = 30.0) -> None:
        """Stop taking requests, let the queued and running ones finish, then stop."""
        self.closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.pending and loop.time() < deadline and self.task is not None:
            await asyncio.sleep(0.01)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=True)
