"""Reading YAML (and JSON) documents with bounded cost: the one reader for every config, profile and job file.

`yaml.safe_load` never runs code, but it is not bounded: 600 bytes of nested aliases ("billion laughs") expand to
billions of nodes as soon as anything walks the result (pydantic, json.dumps), deep nesting overflows the stack, and
a recursive alias builds a cyclic structure. Here a document is refused when the file is over `MAX_DOCUMENT_BYTES`,
when its fully expanded tree (every alias counted at its full size) is over `MAX_NODES` nodes, when it is cyclic, or
when it nests deeper than Python can walk. Errors are one `ConfigError` line naming the source.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import ConfigError

MAX_DOCUMENT_BYTES = 1024 * 1024
MAX_NODES = 100_000


def expanded_size(obj: Any, limit: int = MAX_NODES) -> int:
    """Nodes in `obj` with shared sub-trees counted every time they are referenced (what a walk would visit).

    Linear in the number of distinct objects (memoised by identity). Raises `ValueError` on a cycle or when the
    count passes `limit`.
    """
    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(x: Any) -> int:
        if not isinstance(x, (dict, list, tuple)):
            return 1
        key = id(x)
        if key in memo:
            return memo[key]
        if key in active:
            raise ValueError("the document refers to itself (a recursive alias)")
        active.add(key)
        children = [*x.keys(), *x.values()] if isinstance(x, dict) else list(x)
        total = 1
        for c in children:
            total += size(c)
            if total > limit:
                raise ValueError(f"the document expands to more than {limit} values (aliases repeated too often)")
        active.discard(key)
        memo[key] = total
        return total

    return size(obj)


def parse_document(text: str, source: str, *, json_only: bool = False) -> Any:
    """Parse YAML (a superset of JSON) or strict JSON text, bounded as the module docstring says."""
    import yaml

    if len(text) > MAX_DOCUMENT_BYTES:
        raise ConfigError(f"{source}: {len(text)} characters, over the {MAX_DOCUMENT_BYTES // 1024} KiB limit")
    try:
        data = json.loads(text) if json_only else yaml.safe_load(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{source}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to read") from None
    try:
        expanded_size(data)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}: refusing to read it") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply to read") from None
    return data


def read_document(path: str | os.PathLike, what: str = "file") -> Any:
    """Read a YAML or JSON (by suffix `.json`) file with the size checked before reading. Errors name the file."""
    p = Path(path)
    try:
        if not p.is_file():
            raise ConfigError(f"{what} not found: {p}: check the path")
        size = p.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise ConfigError(f"{p}: {size} bytes, over the {MAX_DOCUMENT_BYTES // 1024} KiB limit for a {what}")
        text = p.read_bytes()[: MAX_DOCUMENT_BYTES + 1].decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text: save the {what} as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"cannot read {what} {p}: {e.strerror or e}") from None
    return parse_document(text, str(p), json_only=p.suffix.lower() == ".json")


__all__ = ["MAX_DOCUMENT_BYTES", "MAX_NODES", "expanded_size", "parse_document", "read_document"]
