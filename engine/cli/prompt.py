"""`flx prompt NAME [NAME...] "scene"`: print the exact prompt a render would send, so users can see it.

Thin: loads the characters (library names or `.flx` files), calls `engine.prompts.compose_prompt`, prints.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from engine._core.text import printable

from .context import settings_from

console = Console(highlight=False, soft_wrap=True)


def e(value: object) -> str:
    """User text printed literally: no rich markup, control/bidi characters as visible escapes."""
    return escape(printable(value))


def _is_file(spec: str) -> bool:
    p = Path(spec)
    return p.suffix.lower() == ".flx" or p.is_file()


def load_characters(ctx: typer.Context, specs: list[str]) -> list:
    """Characters by library name/id or `.flx` path, in the order given; the library is opened only if needed."""
    from engine.api import Engine
    from engine.characters import read_flx

    out: list = [read_flx(Path(s)).character if _is_file(s) else None for s in specs]
    names = [s for s, ch in zip(specs, out) if ch is None]
    if names:
        chars = Engine(settings_from(ctx)).characters
        loaded = iter([chars.get(n) for n in names])
        out = [ch if ch is not None else next(loaded) for ch in out]
    return out


def prompt(
    ctx: typer.Context,
    characters: list[str] | None = typer.Argument(
        None, help="Up to 4 characters (library name or id, or a .flx file); they take regions left to right."
    ),
    scene: str = typer.Argument(
        ..., help="The scene; \\[char1]..\\[char4] or a character's name refer to the characters."
    ),
    model: str = typer.Option("sdxl", "--model", "-m", help="Template family: sdxl (stills) or wan (video)."),
    motion: str | None = typer.Option(None, "--motion", help="How the subject and camera move (wan only)."),
    templates: Path | None = typer.Option(
        None, "--templates", help="Prompt templates YAML (default configs/prompts.yaml)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (everything compose returns)."),
) -> None:
    """Show the prompt, negative prompt, template version and character bindings a render would use.

    The scene comes last. Examples:

      flx prompt ava "reading in a rainy cafe"

      flx prompt ava bob "\\[char1] hands a coffee to \\[char2]"

      flx prompt mira.flx "walking on a beach" --model wan --motion "slow dolly forward"
    """
    from engine.prompts import check_character_count, compose_prompt, load_prompt_templates

    specs = list(characters or [])
    check_character_count(len(specs))  # before any character is read
    tpl = load_prompt_templates(templates)
    result = compose_prompt(scene, load_characters(ctx, specs), family=model, motion=motion, templates=tpl)
    if as_json:
        typer.echo(json.dumps(result.model_dump(mode="json"), indent=1))  # ASCII-escaped: safe for any terminal
        return
    console.print(f"[bold]prompt[/] ({e(result.template_version)}):")
    console.print(f"  {e(result.prompt)}")
    console.print("[bold]negative prompt:[/]")
    console.print(f"  {e(result.negative_prompt)}")
    if result.bindings:
        console.print("[bold]characters:[/]")
    for b in result.bindings:
        how = {"placeholder": f"as \\[char{b.index}]", "name": "by name"}.get(b.mentioned or "", "not mentioned")
        console.print(
            f"  \\[char{b.index}] {e(b.name)}  id {b.character_id}  v{b.version}  region {e(b.region)}  (scene: {how})"
        )
    limit = f" of the {result.max_tokens} the text encoder reads" if result.max_tokens else ""
    console.print(f"[dim]about {result.token_estimate}+ text tokens{limit}[/]")
    for note in result.notes:
        console.print(f"[yellow]note:[/] {e(note)}")
