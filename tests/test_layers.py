"""The import layers of style.md, checked on the source (lower layers never import higher ones)."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[1] / "engine"

# package -> engine packages it must NOT import (directly or lazily inside functions)
FORBIDDEN = {
    "_core": {
        "identity",
        "characters",
        "models",
        "pipelines",
        "scoring",
        "api",
        "cli",
        "diagnostics",
        "presets",
        "runtime",
        "outputs",
        "prompts",
        "shots",
        "video",
        "processors",
        "adapters",
        "training",
    },
    "identity": {
        "characters",
        "scoring",
        "pipelines",
        "api",
        "cli",
        "shots",
        "prompts",
        "processors",
        "adapters",
        "training",
    },
    "models": {
        "identity",
        "characters",
        "scoring",
        "pipelines",
        "api",
        "cli",
        "shots",
        "prompts",
        "processors",
        "adapters",
        "training",
    },
    "characters": {"scoring", "pipelines", "api", "cli", "shots", "prompts", "processors", "adapters", "training"},
    "scoring": {"pipelines", "api", "cli", "shots", "prompts", "training"},
    "pipelines": {"characters", "scoring", "api", "cli", "shots", "prompts", "training"},
    "prompts": {"pipelines", "scoring", "models", "api", "cli", "shots", "training"},  # pure text from profiles
    "shots": {"cli"},  # the shot runners sit just under the Engine facade
    # the LoRA trainer: over pipelines, scoring and characters (it renders and scores validation images), under the
    # Engine facade like the shot runners
    "training": {"api", "cli", "shots"},
    # attention processors and model adapters (Stand-In): on _core (and models' types) only; processors sit under
    # adapters, and pipelines use both
    "processors": {
        "identity",
        "characters",
        "scoring",
        "pipelines",
        "adapters",
        "api",
        "cli",
        "diagnostics",
        "presets",
        "runtime",
        "outputs",
        "prompts",
        "shots",
        "video",
        "training",
    },
    "adapters": {
        "identity",
        "characters",
        "scoring",
        "pipelines",
        "api",
        "cli",
        "diagnostics",
        "presets",
        "runtime",
        "outputs",
        "prompts",
        "shots",
        "video",
        "training",
    },
    # video files (writer, fps, stitch): on _core and outputs only, so every layer above can write MP4s
    "video": {
        "identity",
        "characters",
        "models",
        "pipelines",
        "scoring",
        "api",
        "cli",
        "diagnostics",
        "presets",
        "runtime",
        "prompts",
        "shots",
        "training",
    },
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
        "import sys, engine, engine.api, engine.cli.main; "
        "print(sorted(m for m in ('torch', 'diffusers', 'dlib', 'insightface', 'onnxruntime') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", out
