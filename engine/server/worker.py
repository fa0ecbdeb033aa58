"""The server's GPU worker: one `flx batch worker` subprocess that runs queued batches from the job store.

A separate process, not a thread: a render holds the GIL-free GPU for minutes and a crash (CUDA OOM, a segfault in
a native library) must not take the HTTP server down. The queue is the store, so a worker that dies loses nothing:
the server starts a new one, which takes over the interrupted batch (`JobStore.claim_next`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

logger = logging.getLogger("engine.server")

STOP_GRACE_S = 10.0
RESTART_BACKOFF_S = (1.0, 5.0, 30.0)


def worker_command(settings) -> list[str]:
    """`python -m engine.cli.main --home H [--weights-dir W] batch worker`."""
    cmd = [sys.executable, "-m", "engine.cli.main", "--home", str(settings.home)]
    if settings.weights_dir:
        cmd += ["--weights-dir", str(settings.weights_dir)]
    return [*cmd, "batch", "worker"]


def worker_env(settings) -> dict[str, str]:
    """The server's environment plus every setting it was given explicitly (as `FLX_*`), so the worker opens the
    same library, outputs, presets and device."""
    env = dict(os.environ)
    for name in sorted(settings.model_fields_set - {"home", "weights_dir"}):
        value = getattr(settings, name)
        if value is None:
            continue
        env[f"FLX_{name.upper()}"] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return env


def _parent_death_signal():
    """Linux: a `preexec_fn` that kills the worker when the server process dies, even by SIGKILL: no orphan holds
    the GPU, and its batch (left `running` with a dead runner) is resumed by the next server's worker. libc's
    `prctl` is looked up here, in the parent: the child only calls it."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGKILL)


class WorkerProcess:
    """Starts, watches (restarting it after a crash, with backoff) and stops the worker subprocess."""

    def __init__(self, settings, *, command: list[str] | None = None):
        self.settings = settings
        self.command = command or worker_command(settings)
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._next_start = 0.0
        self._stopping = False
        self._preexec = _parent_death_signal()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def start(self) -> None:
        self._stopping = False
        self.proc = subprocess.Popen(
            self.command, env=worker_env(self.settings), stdin=subprocess.DEVNULL, preexec_fn=self._preexec
        )
        logger.info("batch worker started (pid %d)", self.proc.pid)

    def check(self) -> None:
        """Restart a worker that exited on its own (called periodically by the app)."""
        if self._stopping or self.proc is None or self.proc.poll() is None:
            return
        now = time.monotonic()
        if now < self._next_start:
            return
        logger.warning("batch worker exited with %s: starting a new one", self.proc.returncode)
        self._next_start = now + RESTART_BACKOFF_S[min(self.restarts, len(RESTART_BACKOFF_S) - 1)]
        self.restarts += 1
        self.start()

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM (the worker stops after its current batch), then SIGKILL after `grace_s`.

        A batch still running when the worker is killed keeps its state in the store (every change is committed as
        it happens; finished shots stay done) and is taken over by the next worker, so a server restart resumes it.
        SIGINT is not used: the runner records a Ctrl-C as a cancel, which a restart would not resume."""
        self._stopping = True
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            logger.info(
                "batch worker still busy after %.0f s: stopping it; its batch resumes on the next start", grace_s
            )
        proc.kill()
        proc.wait(timeout=30)
