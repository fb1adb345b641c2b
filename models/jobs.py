"""Running analyses off the render thread: a small job runner with progress,
cancellation, seeds and a result cache.

`JobRunner.submit(fn, key=..., seed=...)` runs `fn(ctx)` on a worker thread and
returns a `Job` at once; `ctx.progress(done, total)` reports, `ctx.check()` raises
`JobCancelled` once `job.cancel()` was called. Results that are bytes (content
blobs) are cached by key — (model digest, analysis, parameters) — in a
`ResultCache`: written to a temporary file and renamed only when the job
succeeded, so a failed or cancelled job leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from deeproom.models.errors import JobCancelled

T = TypeVar("T")


class JobContext:
    """Handed to every job: progress reporting, cancellation, the seed."""

    def __init__(self, seed: int = 0, on_progress: Callable[[float, str], None] | None = None) -> None:
        self.seed = seed
        self._cancel = threading.Event()
        self._on_progress = on_progress
        self.fraction = 0.0
        self.message = ""

    def progress(self, done: float, total: float = 1.0, message: str = "") -> None:
        """Report `done` of `total`; also a cancellation point."""
        self.fraction = 0.0 if total <= 0 else max(0.0, min(1.0, done / total))
        self.message = message
        if self._on_progress is not None:
            self._on_progress(self.fraction, message)
        self.check()

    def check(self) -> None:
        """Raise JobCancelled if the job was cancelled."""
        if self._cancel.is_set():
            raise JobCancelled("the job was cancelled; nothing was cached")

    def cancel(self) -> None:
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()


NULL_CONTEXT_SEED = 0


def context(ctx: JobContext | None) -> JobContext:
    """The given context, or a fresh one (analyses called directly, not as jobs)."""
    return ctx if ctx is not None else JobContext(NULL_CONTEXT_SEED)


def cache_key(model_digest: str, analysis: str, params: Mapping[str, Any]) -> str:
    """sha256 of (model digest, analysis name, parameters as canonical JSON)."""
    blob = json.dumps({"model": model_digest, "analysis": analysis, "params": dict(params)},
                      sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResultCache:
    """Content blobs on disk by cache key; only complete results are ever visible."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"cache keys are sha256 hex digests; got {key!r:.80}")
        return self.dir / key[:2] / key

    def get(self, key: str) -> bytes | None:
        p = self._path(key)
        try:
            return p.read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes) -> None:
        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{key}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)

    def __contains__(self, key: str) -> bool:
        return self._path(key).exists()

    def keys(self) -> list[str]:
        return sorted(p.name for p in self.dir.glob("??/*") if not p.name.startswith("."))

    def stray_files(self) -> list[Path]:
        """Temporary files left behind (should always be empty)."""
        return sorted(self.dir.glob("??/.*.tmp"))


@dataclass
class Job(Generic[T]):
    """A submitted job: its future, live progress, and a cancel switch."""

    key: str | None
    ctx: JobContext
    future: Future[T]
    cached: bool = False
    started: float = field(default_factory=time.perf_counter)

    @property
    def progress(self) -> float:
        return 1.0 if self.future.done() else self.ctx.fraction

    def cancel(self) -> None:
        self.ctx.cancel()
        self.future.cancel()

    def result(self, timeout: float | None = None) -> T:
        return self.future.result(timeout)

    def done(self) -> bool:
        return self.future.done()


class JobRunner:
    """A thread pool for analyses; `with JobRunner() as r:` shuts it down (twice is safe)."""

    def __init__(self, workers: int = 1, cache: ResultCache | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="deeproom-job")
        self.cache = cache
        self._closed = False

    def submit(
        self, fn: Callable[[JobContext], T], *, key: str | None = None, seed: int = 0,
        on_progress: Callable[[float, str], None] | None = None,
    ) -> Job[T]:
        """Run `fn(ctx)` off the calling thread. With a key and a cache, a cached result
        returns at once, and a bytes result is stored only if the job succeeds."""
        ctx = JobContext(seed, on_progress)
        if key is not None and self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                f: Future[Any] = Future()
                f.set_result(hit)
                return Job(key, ctx, f, cached=True)

        def run() -> T:
            import torch

            torch.manual_seed(seed)
            ctx.check()
            out = fn(ctx)
            ctx.check()
            if key is not None and self.cache is not None and isinstance(out, bytes | bytearray):
                self.cache.put(key, bytes(out))
            ctx.fraction = 1.0
            return out

        return Job(key, ctx, self._pool.submit(run))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> JobRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(label: str = "", width: int = 30, stream: Any = None) -> Callable[[float, str], None]:
    """A text progress bar for the command line (redraws one line on stderr)."""
    import sys

    out = stream or sys.stderr
    last = [-1]

    def draw(fraction: float, message: str) -> None:
        filled = int(fraction * width)
        pct = int(fraction * 100)
        if pct == last[0]:
            return
        last[0] = pct
        out.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {pct:3d}% {message[:30]:<30}")
        if fraction >= 1.0:
            out.write("\n")
        out.flush()

    return draw
