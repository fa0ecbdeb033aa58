"""The queue's worker loop: what `flx batch worker` (and the server's GPU worker process) runs.

One worker holds one warm `Engine` and runs queued batches one after another, oldest first; a batch whose runner
died (its pid is gone, or it stopped beating) is claimed again and continues where it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .runner import run_batch

if TYPE_CHECKING:
    from engine.api import Engine

    from .store import JobStore


def run_worker(
    engine: Engine,
    store: JobStore,
    *,
    worker_id: str,
    should_stop: Callable[[], bool],
    poll_s: float = 0.5,
    once: bool = False,
    progress=None,
) -> int:
    """Claim and run batches until `should_stop()` (or, with `once`, until the queue is empty). Returns how many
    batches ran. A batch's failed shots are recorded in the store; the worker goes on to the next batch."""
    ran = 0
    while not should_stop():
        batch_id = store.claim_next(worker_id)
        if batch_id is None:
            if once:
                break
            time.sleep(poll_s)
            continue
        run_batch(engine, store, batch_id, runner=worker_id, progress=progress)
        ran += 1
    return ran


__all__ = ["run_worker"]
