#!/usr/bin/env python
"""Write the tiny random-weight twins of every real component into the weights root.

For each manifest entry whose source is `generated`, the builder named there
(`scripts/tiny_weights`) writes the component's exact on-disk layout into a temp folder
next to the destination; the folder is then renamed into place (no half-written component
is ever visible) and hashed into the weights lock, so `WeightsStore.require` verifies it
like any downloaded component.

Usage::

    python scripts/make_tiny_weights.py [--weights-dir DIR] [--only ID ...] [--force]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

_SCRIPTS = Path(__file__).resolve().parent
if str(_SCRIPTS) not in sys.path:  # `tiny_weights` sits next to this script
    sys.path.insert(0, str(_SCRIPTS))


def make_tiny_weights(
    settings,
    only: Iterable[str] | None = None,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, float]:
    """Build every generated component that is missing or unverified (all of them with `force`).

    Args:
        settings (`EngineSettings`): gives the weights root and the manifest.
        only (`Iterable[str]`, *optional*): restrict to these manifest ids.
        force (`bool`, defaults to `False`): rebuild even when present and verified.
        log (`Callable[[str], None]`, defaults to `print`): progress lines.

    Returns:
        `dict[str, float]`: seconds spent per component that was built (skipped ones are absent; a
        builder whose module is not there is logged as SKIPPED).
    """
    from tiny_weights import BUILDERS, BuilderUnavailable

    from engine._core.errors import InputError
    from engine.models.fetch import convert_component
    from engine.models.store import WeightsStore

    store = WeightsStore(settings)
    generated = [c for c in store.manifest.components if c.is_generated]
    if only:
        wanted = list(only)
        known = {c.id for c in generated}
        unknown = [i for i in wanted if i not in known]
        if unknown:
            raise InputError(f"not generated components: {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
        generated = [c for c in generated if c.id in wanted]

    store.root.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    for entry in generated:
        builder = BUILDERS.get(entry.source.builder)
        if builder is None:
            raise InputError(f"manifest entry '{entry.id}' names unknown builder '{entry.source.builder}'")
        if not force and store.status(entry.id).ok:
            log(f"{entry.id}: present and verified")
            continue
        t0 = time.perf_counter()
        converted: dict[str, str] = {}
        # A twin of a converted component is written in the publisher's format (e.g. a torch pickle) and converted
        # inside the temp folder, like a download: the lock then holds only the converted file.
        finish = (lambda d, e=entry, c=converted: c.update(convert_component(e, d))) if entry.convert else None
        try:
            _build_atomically(builder, store.root / entry.id, entry.source.seed, finish)
        except BuilderUnavailable as e:
            log(f"{entry.id}: SKIPPED ({e})")
            continue
        store.record(entry.id, revision=f"generated-seed{entry.source.seed}", converted_from=converted or None)
        timings[entry.id] = time.perf_counter() - t0
        log(f"{entry.id}: built in {timings[entry.id]:.2f}s")
    return timings


def _build_atomically(builder, dest: Path, seed: int, finish: Callable[[Path], None] | None = None) -> None:
    """Build into a hidden temp folder beside `dest` (then `finish(tmp)`, e.g. a convert step), then swap it in."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".building", dir=dest.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the component is an ordinary folder
    try:
        builder(tmp, seed)
        if finish is not None:
            finish(tmp)
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old-{time.time_ns()}")
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir", type=Path, help="weights root (default: FLX_WEIGHTS_DIR or <home>/weights)")
    parser.add_argument("--only", nargs="+", metavar="ID", help="only these manifest ids")
    parser.add_argument("--force", action="store_true", help="rebuild even when present and verified")
    args = parser.parse_args(argv)
    import os

    for var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ.setdefault(var, "error")  # keep the output to one line per component
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    from engine._core.errors import EngineError
    from engine._core.settings import EngineSettings

    settings = EngineSettings(weights_dir=args.weights_dir) if args.weights_dir else EngineSettings()
    t0 = time.perf_counter()
    try:
        built = make_tiny_weights(settings, only=args.only, force=args.force)
    except EngineError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"{len(built)} component(s) built into {settings.weights_root} in {time.perf_counter() - t0:.1f}s")
    from engine.models.store import WeightsStore

    store = WeightsStore(settings)
    ids = args.only or [c.id for c in store.manifest.components if c.is_generated]
    not_ready = [i for i in ids if not store.status(i).ok]
    if not_ready:
        print(f"not built: {', '.join(not_ready)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
