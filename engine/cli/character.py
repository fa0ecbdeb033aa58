"""`flx character ...`: create, list, inspect, version, export and import characters.

Thin: each command parses flags, calls one method of `Engine(settings).characters` (`engine.api_characters`), and
prints with rich.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine._core.text import printable
from engine.api import Engine

from .context import settings_from

app = typer.Typer(help="Create, inspect, export and import characters.", no_args_is_help=True)
console = Console(highlight=False, soft_wrap=True)

_STATUS_STYLE = {"ok": "green", "pass": "green", "good": "green", "warn": "yellow", "warning": "yellow",
                 "fail": "red", "bad": "red", "error": "red", "skip": "dim", "skipped": "dim"}  # fmt: skip


def e(value: object) -> str:
    """User data (names, file names, profile text) printed literally: never as rich markup, and with control,
    bidi and zero-width characters shown as visible escapes (a stranger's `.flx` cannot drive the terminal)."""
    return escape(printable(value))


def _characters(ctx: typer.Context):
    """The character API of an Engine built from this command's settings."""
    return Engine(settings_from(ctx)).characters


def _status(s: object) -> str:
    s = str(s) if s is not None else "-"
    style = _STATUS_STYLE.get(s.lower(), "white")
    return f"[{style}]{s}[/]"


def print_quality(source: str, report: dict | None) -> None:
    """The reference quality report as a table: check, status (coloured), value, fix."""
    if not report:
        return
    overall = report.get("status") or report.get("overall")
    table = Table(title=f"{e(source)}: quality {_status(overall)}", title_justify="left", show_lines=False)
    for col in ("check", "status", "value", "fix"):
        table.add_column(col)
    checks = report.get("checks") or []
    if isinstance(checks, dict):
        checks = [{"name": k, **(v if isinstance(v, dict) else {"value": v})} for k, v in checks.items()]
    for c in checks:
        value = c.get("value")
        if isinstance(value, float):
            value = f"{value:.3g}"
        table.add_row(
            str(c.get("name") or c.get("check") or c.get("id") or "?"),
            _status(c.get("status")),
            "" if value is None else e(value),
            e(c.get("fix") or ""),
        )
    console.print(table)


def _print_character(ch) -> None:
    console.print(f"[bold]{e(ch.name)}[/]  id {ch.id}  version {ch.version}  ({e(ch.change)})")
    if ch.parent:
        console.print(f"  variant '{e(ch.variant)}' of {ch.parent.character_id} v{ch.parent.version}")
    console.print(f"  created {ch.created}  updated {ch.updated}  engine {ch.engine_version or '?'}")
    for enc, emb in sorted(ch.embeddings.items()):
        loo = ", ".join("-" if d is None else f"{d:.3f}" for d in emb.leave_one_out_distances)
        console.print(
            f"  encoder {e(enc)}: {emb.dim}-d {emb.metric}, threshold {emb.threshold}; leave-one-out \\[{loo}]"
        )
    for i, r in enumerate(ch.references):
        q = (r.quality or {}).get("status") or (r.quality or {}).get("overall")
        crops = "crops" if r.head_crop else "no crops"
        console.print(
            f"  ref {i}: {e(r.source_filename)} weight {r.weight:g} face {r.face_index} quality {_status(q)} ({crops})"
        )
    prof = ch.profile.model_dump(mode="json", exclude_defaults=True)
    if prof:
        console.print("  profile:")
        for k, v in prof.items():
            console.print(f"    {e(k)}: {e(v if isinstance(v, str) else json.dumps(v))}")
    if ch.lora:
        console.print("  " + lora_line(ch.lora, e))


def lora_line(lora, e=str) -> str:
    """`LoRA: rank 16 (alpha 8), base X, 800 steps, best likeness 81.5% at step 600, trigger 'ohwx', N MiB`."""
    parts = []
    if lora.rank is not None:
        parts.append(f"rank {lora.rank}" + (f" (alpha {lora.alpha:g})" if lora.alpha is not None else ""))
    parts.append(f"base {e(lora.base_model_id)}" + (" + text encoders" if lora.text_encoder else ""))
    if lora.steps is not None:
        parts.append(f"{lora.steps} steps")
    if lora.best_likeness is not None:
        at = f" at step {lora.best_step}" if lora.best_step is not None else ""
        parts.append(f"best likeness {lora.best_likeness:.1f}%{at}")
    if lora.trigger:
        parts.append(f"trigger '{e(lora.trigger)}'")
    parts.append(f"{lora.size / 2**20:.1f} MiB" if lora.size >= 2**20 else f"{lora.size} bytes")
    return "LoRA: " + ", ".join(parts)


@app.command("create")
def create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Library name for the character."),
    ref: list[str] = typer.Option(..., "--ref", help="Reference photo, optionally with a weight: photo.jpg[:0.5]."),
    face: int | None = typer.Option(None, "--face", help="Which face to use in photos that show several."),
    profile: Path | None = typer.Option(None, "--profile", help="Profile YAML/JSON (hair, wardrobe, ...)."),
    force: bool = typer.Option(False, "--force", help="Keep references that look like a different person."),
    encoder: str | None = typer.Option(
        None, "--encoder", help="Identity encoder id (default dlib-resnet-v1; see `flx weights list`)."
    ),
) -> None:
    """Create a character from one or more reference photos."""
    ch = _characters(ctx).create(name, ref, face=face, profile=profile, encoder=encoder, force=force)
    for r in ch.references:
        print_quality(r.source_filename, r.quality)
    _print_character(ch)
    console.print(f"[green]created[/] '{e(ch.name)}' ({ch.id}) from {len(ch.references)} reference(s)")


@app.command("list")
def list_(
    ctx: typer.Context,
    tag: str | None = typer.Option(None, "--tag", help="Only characters with this tag."),
    search: str | None = typer.Option(None, "--search", help="Name contains this text."),
    archived: bool = typer.Option(False, "--archived", help="Include archived characters."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List characters in the library."""
    rows = _characters(ctx).list(search=search, tag=tag, include_archived=archived)
    if as_json:
        console.print_json(json.dumps([r.to_dict() for r in rows]))
        return
    if not rows:
        console.print("no characters (create one with `flx character create NAME --ref photo.jpg`)")
        return
    table = Table()
    for col in ("name", "id", "version", "variant", "encoders", "tags", "last used", "archived"):
        table.add_column(col)
    for r in rows:
        table.add_row(e(r.name), r.id[:8], str(r.latest_version), e(r.variant or ""), ", ".join(r.encoders),
                      e(", ".join(r.tags)), r.last_used or "", "yes" if r.archived else "")  # fmt: skip
    console.print(table)


@app.command("show")
def show(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Name or id."),
    version: int | None = typer.Option(None, "--version", help="An older version (default latest)."),
) -> None:
    """Show one character: identity, references, quality, profile."""
    ch = _characters(ctx).get(name, version)
    _print_character(ch)
    for r in ch.references:
        print_quality(r.source_filename, r.quality)


@app.command("log")
def log(ctx: typer.Context, name: str = typer.Argument(..., help="Name or id.")) -> None:
    """Every version of a character, oldest first."""
    entries = _characters(ctx).log(name)
    table = Table()
    for col in ("version", "name", "updated", "change", "sha256"):
        table.add_column(col)
    for v in entries:
        table.add_row(str(v.version), e(v.name), v.updated, e(v.change), v.sha256[:12])
    console.print(table)


@app.command("rename")
def rename(ctx: typer.Context, old: str = typer.Argument(...), new: str = typer.Argument(...)) -> None:
    """Rename a character (makes a new version)."""
    ch = _characters(ctx).rename(old, new)
    console.print(f"[green]renamed[/] to '{e(ch.name)}' (version {ch.version})")


@app.command("delete")
def delete(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Name or id."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete a character and all its versions (export it first to keep a copy)."""
    chars = _characters(ctx)
    if not yes:  # the question shows what would go; the answer deletes that character (by id)
        s = chars.summary(name)
        if not typer.confirm(f"Delete '{s.name}' ({s.id}) and its {s.latest_version} version(s)?"):
            console.print("not deleted")
            raise typer.Exit(1)
        name = s.id
    s = chars.delete(name)
    console.print(f"[green]deleted[/] '{e(s.name)}'")


@app.command("edit")
def edit(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Name or id."),
    profile: Path | None = typer.Option(
        None, "--profile", help="Profile YAML/JSON whose fields replace the current ones."
    ),
    set_: list[str] | None = typer.Option(None, "--set", help="field=value (YAML value: --set 'tags=[hero, red]')."),
) -> None:
    """Change profile fields; makes a new version (old versions stay readable)."""
    from engine._core.errors import ConfigError, InputError
    from engine._core.yaml_io import parse_document

    changes: dict = {}
    for item in set_ or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {item!r}: use field=value, e.g. --set hair_colour=auburn")
        try:
            changes[key.strip()] = parse_document(raw, f"--set {key.strip()}") if raw.strip() else ""
        except ConfigError:
            changes[key.strip()] = raw  # not YAML: the literal text
    ch = _characters(ctx).update_profile(name, changes, profile=profile)
    console.print(f"[green]updated[/] '{e(ch.name)}' to version {ch.version} ({e(ch.change)})")


@app.command("variant")
def variant(
    ctx: typer.Context,
    base: str = typer.Argument(..., help="Base character name or id."),
    name: str = typer.Argument(..., help="Name of the new variant."),
    wardrobe: str | None = typer.Option(None, "--wardrobe", help="Outfit for this variant."),
    notes: str | None = typer.Option(None, "--notes", help="Notes for this variant."),
) -> None:
    """Make a variant: same identity as BASE, different wardrobe/notes."""
    ch = _characters(ctx).variant(base, name, wardrobe=wardrobe, notes=notes)
    console.print(f"[green]created variant[/] '{e(ch.name)}' ({ch.id}) of {e(base)} v{ch.parent.version}")


@app.command("reembed")
def reembed(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Name or id."),
    encoder: str = typer.Option(..., "--encoder", help="Encoder id to add, e.g. arcface-antelopev2-glintr100."),
) -> None:
    """Compute embeddings for another encoder from the stored reference crops (new version)."""
    ch = _characters(ctx).reembed(name, encoder)
    console.print(f"[green]embedded[/] '{e(ch.name)}' with {e(encoder)} (version {ch.version})")


@app.command("export")
def export(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Name or id."),
    out: Path = typer.Argument(..., help="Output .flx file."),
    no_references: bool = typer.Option(False, "--no-references", help="Leave out the reference photo crops."),
    version: int | None = typer.Option(None, "--version", help="Export an older version."),
) -> None:
    """Export a character to a .flx file."""
    path = _characters(ctx).export(name, out, version=version, include_references=not no_references)
    console.print(f"[green]exported[/] {e(path)}")


@app.command("export-all")
def export_all(
    ctx: typer.Context,
    out_dir: Path = typer.Argument(..., help="Folder for the .flx files."),
    no_references: bool = typer.Option(False, "--no-references", help="Leave out the reference photo crops."),
) -> None:
    """Export every active character (latest version) to a folder."""
    paths = _characters(ctx).export_all(out_dir, include_references=not no_references)
    console.print(f"[green]exported[/] {len(paths)} character(s) to {e(out_dir)}")


@app.command("import")
def import_(ctx: typer.Context, path: Path = typer.Argument(..., help="A .flx file or a folder of them.")) -> None:
    """Import .flx files (verified first; all or nothing)."""
    results = _characters(ctx).import_path(path)
    for w in (w for r in results for w in getattr(r, "warnings", ())):
        console.print(f"[yellow]warning:[/] {e(w)}")
    for r in results:
        console.print(f"{r.status}: '{e(r.name)}' v{r.version} ({r.id}) from {e(r.source)}")


@app.command("inspect")
def inspect(
    ctx: typer.Context,
    path: Path = typer.Argument(..., help="A .flx file."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Verify and describe a .flx file without importing it."""
    info = _characters(ctx).inspect(path)
    if as_json:
        console.print_json(json.dumps(info))
        return
    for w in info["warnings"]:
        console.print(f"[yellow]warning:[/] {e(w)}")
    for k, v in info.items():
        if k == "warnings":
            continue
        console.print(f"[bold]{e(k)}[/]: {e(v if isinstance(v, (str, int)) or v is None else json.dumps(v))}")


@app.command("archive")
def archive(
    ctx: typer.Context,
    days: int = typer.Option(90, "--days", help="Archive characters unused for more than this many days."),
    out_dir: Path | None = typer.Option(None, "--dir", help="Archive folder (default <home>/archive)."),
) -> None:
    """Export long-unused characters to .flx files, then hide them from the active list."""
    paths = _characters(ctx).archive(days, out_dir)
    for p in paths:
        console.print(f"archived {e(p)}")
    console.print(f"[green]{len(paths)}[/] character(s) archived")


@app.command("export-reactor")
def export_reactor(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Name or id."),
    out: Path = typer.Argument(..., help="Output .safetensors file (ComfyUI reads models/reactor/faces/)."),
    encoder: str = typer.Option(
        "arcface-buffalo_l-w600k_r50", "--encoder", help="The buffalo_l ArcFace embedding to export."
    ),
) -> None:
    """Export a character's ArcFace identity as a ReActor face model (.safetensors, loaded by ComfyUI-ReActor)."""
    chars = _characters(ctx)
    ch = chars.get(name)  # for the message: the version exported is this one
    path = chars.export_reactor(ch.id, out, encoder=encoder, version=ch.version)
    console.print(f"[green]exported[/] ReActor face model {e(path)} ('{e(ch.name)}' v{ch.version}, {e(encoder)})")


@app.command("import-reactor")
def import_reactor(
    ctx: typer.Context,
    file: Path = typer.Argument(..., help="A ReActor face model .safetensors file."),
    name: str = typer.Argument(..., help="Library name for the new character."),
    encoder: str = typer.Option(
        "arcface-buffalo_l-w600k_r50",
        "--encoder",
        help="The buffalo_l ArcFace encoder the file was made with (ReActor files do not record it).",
    ),
) -> None:
    """Import a ReActor face model as an embedding-only character (no reference photos; never unpickles)."""
    ch = _characters(ctx).import_reactor(file, name, encoder=encoder)
    console.print(f"[green]imported[/] '{e(ch.name)}' ({ch.id}) from {e(file)}: embedding only, {e(encoder)}")
