"""The engine: one worker thread owns the model (one KV cache); requests wait in a bounded FIFO,
stream their text back to the event loop, and are cancelled when their client goes away."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Any

from q35f.serve.requests import ChatRequest, StopFilter

class QueueFull(Exception):
    pass


class Job:
    """One request's trip through the engine; the worker reports to it through an asyncio queue.

    Items put on `events`: ("text", str) for each piece of visible text, then exactly one of
    ("done", finish_reason, usage_dict) or ("error", message).
    """

    def __init__(self, request: ChatRequest, loop: asyncio.AbstractEventLoop):
        self.request = request
        self.loop = loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.state = "new"  # new -> waiting -> running -> done (changed under Engine._lock)
        self.enqueued_at = time.perf_counter()

    def emit(self, *item) -> None:
        """Called from the worker thread."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server shutting down)
            pass


class Engine:
    def __init__(self, generator, max_queue: int):
        if max_queue < 0:
            raise ValueError(f"--max-queue must be >= 0, got {max_queue}")
        self.generator = generator
        self.max_queue = max_queue
        self._lock = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: Job | None = None
        self._closed = False
        self.counters = {"accepted": 0, "completed": 0, "cancelled": 0, "rejected_queue_full": 0,
                         "failed": 0}
        self._thread = threading.Thread(target=self._work, name="q35f-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for job in self._waiting:
                job.cancelled.set()
            self._waiting.clear()
            if self._running is not None:
                self._running.cancelled.set()
            self._lock.notify_all()
        self._thread.join(timeout=10)

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {"running": int(self._running is not None), "waiting": len(self._waiting),
                    "max_queue": self.max_queue, **self.counters}

    def submit(self, job: Job) -> None:
        """Queue a job; raise QueueFull when `max_queue` jobs already wait behind a running one."""
        with self._lock:
            in_system = len(self._waiting) + (self._running is not None)
            if self._closed or in_system >= 1 + self.max_queue:
                self.counters["rejected_queue_full"] += 1
                raise QueueFull
            job.state = "waiting"
            job.enqueued_at = time.perf_counter()
            self._waiting.append(job)
            self.counters["accepted"] += 1
            self._lock.notify_all()

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job if it waits, stop it if it runs; no-op when done."""
        with self._lock:
            if job.state in ("new", "done") or job.cancelled.is_set():
                return
            job.cancelled.set()
            self.counters["cancelled"] += 1
            if job.state == "waiting":
                self._waiting.remove(job)
                job.state = "done"

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                job = self._waiting.popleft()
                job.state = "running"
                self._running = job
            try:
                result = self._generate(job)
                error = None
            except Exception as err:  # the model failed: fail this request, keep serving
                result, error = None, f"{type(err).__name__}: {err}"
                logging.getLogger("q35f.serve.server").error("request failed in the model",
                                                      exc_info=True)
            with self._lock:
                self._running = None
                job.state = "done"
                if error is not None:
                    self.counters["failed"] += 1
                elif not job.cancelled.is_set():
                    self.counters["completed"] += 1
            if error is not None:
                job.emit("error", error)
            else:
                job.emit("done", *result)

    def _generate(self, job: Job) -> tuple[str, dict[str, Any]]:
        request = job.request
        started = time.perf_counter()
        first = None
        completion_tokens = 0
        finish = None
        stop = StopFilter(request.stop)
        stream = self.generator.stream(request.prompt_ids, request.max_tokens,
                                       temperature=request.temperature, top_p=request.top_p,
                                       seed=request.seed)
        try:
            for event in stream:
                if first is None:
                    first = time.perf_counter()
                completion_tokens += 1
                text, stopped = stop.feed(event.text or "")
                if text:
                    job.emit("text", text)
                if stopped:
                    finish = "stop"
                    break
                if event.finish_reason:
                    finish = event.finish_reason
                    break
                if job.cancelled.is_set():
                    finish = "stop"
                    break
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()
        tail = stop.flush()  # text held back for a stop string that never came
        if tail:
            job.emit("text", tail)
        end = time.perf_counter()
        first = end if first is None else first
        prompt_time, completion_time = first - started, end - first
        usage = {
            "prompt_tokens": len(request.prompt_ids),
            "completion_tokens": completion_tokens,
            "total_tokens": len(request.prompt_ids) + completion_tokens,
            "queue_time": started - job.enqueued_at,
            "prompt_time": prompt_time,
            "completion_time": completion_time,
            "total_time": prompt_time + completion_time,
        }
        return finish or "length", usage


# ---------------------------------------------------------------------------------------------
# The ASGI app
