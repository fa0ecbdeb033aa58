"""The import layers of style.md, checked on the source (lower layers never import higher ones)."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "engine"

# package -> engine packages it must NOT import (directly or lazily inside functions)
FORBIDDEN = {
    "_core": {
        "adapters",
        "api",
        "api_characters",
        "characters",
        "cli",
        "diagnostics",
        "distributed",
        "identity",
        "jobs",
        "models",
        "outputs",
        "pipelines",
        "presets",
        "processors",
        "prompts",
        "runtime",
        "scoring",
        "server",
        "shots",
        "training",
        "video",
    },
    "identity": {
        "adapters",
        "api",
        "api_characters",
        "characters",
        "cli",
        "distributed",
        "jobs",
        "pipelines",
        "processors",
        "prompts",
        "scoring",
        "server",
        "shots",
        "training",
    },
    "models": {
        "adapters",
        "api",
        "api_characters",
        "characters",
        "cli",
        "distributed",
        "identity",
        "jobs",
        "pipelines",
        "processors",
        "prompts",
        "scoring",
        "server",
        "shots",
        "training",
    },
    "characters": {
        "adapters",
        "api",
        "api_characters",
        "cli",
        "distributed",
        "jobs",
        "pipelines",
        "processors",
        "prompts",
        "scoring",
        "server",
        "shots",
        "training",
    },
    "scoring": {
        "api",
        "api_characters",
        "cli",
        "distributed",
        "jobs",
        "pipelines",
        "prompts",
        "server",
        "shots",
        "training",
    },
    "pipelines": {
        "api",
        "api_characters",
        "characters",
        "cli",
        "distributed",
        "jobs",
        "prompts",
        "scoring",
        "server",
        "shots",
        "training",
    },
    # pure text from profiles
    "prompts": {
        "api",
        "api_characters",
        "cli",
        "distributed",
        "jobs",
        "models",
        "pipelines",
        "scoring",
        "server",
        "shots",
        "training",
    },
    # the shot runners sit just under the Engine facade
    "shots": {"cli", "distributed", "jobs", "server"},
    # the LoRA trainer: over pipelines, scoring and characters (it renders and scores validation images), under the
    # Engine facade like the shot runners
    "training": {"api", "api_characters", "cli", "distributed", "jobs", "server", "shots"},
    # attention processors and model adapters (Stand-In): on _core (and models' types) only; processors sit under
    # adapters, and pipelines use both
    "processors": {
        "adapters",
        "api",
        "api_characters",
        "characters",
        "cli",
        "diagnostics",
        "distributed",
        "identity",
        "jobs",
        "outputs",
        "pipelines",
        "presets",
        "prompts",
        "runtime",
        "scoring",
        "server",
        "shots",
        "training",
        "video",
    },
    "adapters": {
        "api",
        "api_characters",
        "characters",
        "cli",
        "diagnostics",
        "distributed",
        "identity",
        "jobs",
        "outputs",
        "pipelines",
        "presets",
        "prompts",
        "runtime",
        "scoring",
        "server",
        "shots",
        "training",
        "video",
    },
    # video files (writer, fps, stitch): on _core and outputs only, so every layer above can write MP4s
    "video": {
        "api",
        "api_characters",
        "characters",
        "cli",
        "diagnostics",
        "distributed",
        "identity",
        "jobs",
        "models",
        "pipelines",
        "presets",
        "prompts",
        "runtime",
        "scoring",
        "server",
        "shots",
        "training",
    },
    # the Engine facade, then above it: jobs (queue and runner) <- server, distributed (Ray) and cli, which never
    # import each other
    "api": {"cli", "distributed", "jobs", "server"},
    "api_characters": {"cli", "distributed", "jobs", "server"},
    "jobs": {"cli", "distributed", "server"},
    "server": {"cli", "distributed"},
    "distributed": {"cli", "server"},
}


def _engine_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = path.relative_to(ENGINE).parts[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module and node.module.startswith("engine."):
                found.add(node.module.split(".")[1])
            elif node.level == 2 and node.module:  # from ..x import
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.add(pkg)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("engine."):
                    found.add(a.name.split(".")[1])
    return {m.removesuffix(".py") for m in found}


def test_lower_layers_do_not_import_higher_ones():
    violations = []
    for pkg, banned in FORBIDDEN.items():
        files = sorted((ENGINE / pkg).rglob("*.py")) if (ENGINE / pkg).is_dir() else [ENGINE / f"{pkg}.py"]
        assert files and all(f.exists() for f in files), pkg
        for f in files:
            bad = _engine_imports(f) & banned
            if bad:
                violations.append(f"{f.relative_to(ENGINE)} imports {sorted(bad)}")
    assert not violations, "\n".join(violations)


def test_nothing_heavy_at_import_time():
    """Importing the package and the CLI must not load torch/diffusers/dlib (fast `flx --help`)."""
    import subprocess
    import sys

    code = (
        "import sys, engine, engine.api, engine.cli.main, engine.jobs.runner, engine.jobs.store; print(sorted(m for m "
        "in ('torch', 'diffusers', 'dlib', 'insightface', 'onnxruntime', 'ray', 'fastapi') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
