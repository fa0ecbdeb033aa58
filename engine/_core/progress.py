"""Denoising-step progress for whoever runs a shot (the batch runner, the server's worker).

A render is several layers below the job runner (shot -> adapter -> pipeline call), and threading a callback
through each would change every signature for one cross-cutting concern. Instead the runner opens
`step_progress(observer)` around a shot, and the two places that call a diffusers pipeline (stills and clips) add
`observe_steps(...)` to their `callback_on_step_end`. The observer is held in a `ContextVar`: per thread and per
task, never a process-wide global, and absent (a no-op) outside a runner. An observer may raise (e.g.
`JobCancelled`) to stop the render at the next step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

StepObserver = Callable[[int, int], None]
"""Called as `observer(step_done, steps_total)` after every denoising step."""

_observer: ContextVar[StepObserver | None] = ContextVar("flx_step_observer", default=None)


@contextlib.contextmanager
def step_progress(observer: StepObserver | None) -> Iterator[None]:
    """Report the steps of every render inside the block to `observer`."""
    token = _observer.set(observer)
    try:
        yield
    finally:
        _observer.reset(token)


def observe_steps(callback, total: int):
    """`callback_on_step_end` for a pipeline call of `total` steps: runs `callback` (may be None), then tells the
    current observer. Returns `callback` itself when nobody observes (the stock call stays unchanged)."""
    observer = _observer.get()
    if observer is None:
        return callback

    def on_step_end(pipeline, step, timestep, callback_kwargs):
        if callback is not None:
            callback_kwargs = callback(pipeline, step, timestep, callback_kwargs)
        observer(int(step) + 1, int(total))
        return callback_kwargs

    return on_step_end


__all__ = ["StepObserver", "observe_steps", "step_progress"]
