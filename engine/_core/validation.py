"""Turning a pydantic validation error into the one line a user sees, with the allowed values read from the model.

Every bound of a user-facing value lives on its pydantic field (one source); the CLI and the API only translate
errors. `allowed_range` words a field's own constraints ("a whole number from 1 to 120"), so a message can never
disagree with the check.
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, get_args, get_origin

from pydantic import BaseModel, ValidationError

from .text import printable


def _constraints(annotation) -> tuple[dict, bool]:
    """(bounds, is_int) of a field annotation, looking inside Optional/Union and Annotated."""
    bounds: dict = {}
    is_int = False
    stack = [annotation]
    while stack:
        a = stack.pop()
        origin = get_origin(a)
        if origin is Annotated:
            base, *meta = get_args(a)
            for m in meta:
                for k in ("ge", "gt", "le", "lt"):
                    v = getattr(m, k, None)
                    if v is not None:
                        bounds.setdefault(k, v)
            stack.append(base)
        elif origin in (typing.Union, types.UnionType):
            stack.extend(get_args(a))
        elif a is int:
            is_int = True
    return bounds, is_int


def allowed_range(model: type[BaseModel], name: str) -> str:
    """The values field `name` of `model` allows, in words, read from its own constraints."""
    info = model.model_fields[name]
    bounds, is_int = _constraints(info.annotation)
    for m in info.metadata:
        for k in ("ge", "gt", "le", "lt"):
            v = getattr(m, k, None)
            if v is not None:
                bounds.setdefault(k, v)
    kind = "a whole number" if is_int else "a number"
    if "ge" in bounds and "le" in bounds:
        return f"{kind} from {bounds['ge']:g} to {bounds['le']:g}"
    words = {"ge": "of at least", "gt": "greater than", "le": "at most", "lt": "less than"}
    parts = [f"{words[k]} {v:g}" for k, v in bounds.items()]
    return f"{kind} {' and '.join(parts)}" if parts else f"a valid {name}"


def one_line(model: type[BaseModel], err: ValidationError, flags: dict[str, str] | None = None) -> str:
    """`--flag must be a number from 0 to 2 (got 5)` for the first error of validating `model`."""
    e = err.errors()[0]
    name = str(e["loc"][0]) if e["loc"] else ""
    flag = (flags or {}).get(name, name or model.__name__)
    got = printable(repr(e.get("input")), limit=60)
    if name in model.model_fields and e["type"] in (
        "greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number",
        "int_parsing", "float_parsing", "int_from_float",
    ):  # fmt: skip
        return f"{flag} must be {allowed_range(model, name)} (got {got})"
    return f"{flag}: {printable(str(e['msg']).replace('Value error, ', ''), limit=200)} (got {got})"


__all__ = ["allowed_range", "one_line"]
