"""Running batches across machines: a Ray backend for the job runner (`flx batch run JOB.yaml --ray auto`).

`RayBackend` implements the runner's `ShotBackend`: one long-lived `EngineActor` per GPU keeps its pipelines warm,
shots are scheduled onto the actors, a shot whose worker dies is retried on another one, and the driver (the
runner) commits every result into the same SQLite job store as the embedded queue. Ray itself is imported only
when a backend connects (`pip install -e '.[distributed]'`). Cluster setup: docs/distributed.md.
"""

from __future__ import annotations

from .ray_backend import EngineActor, InFlightShot, RayBackend

__all__ = ["EngineActor", "InFlightShot", "RayBackend"]
