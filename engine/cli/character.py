"""`flx character ...` (filled in by the characters work)."""

import typer

app = typer.Typer(help="Create, inspect, export and import characters.", no_args_is_help=True)
