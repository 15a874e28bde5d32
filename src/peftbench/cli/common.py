"""What every command shares: the app, its consoles, and bad input as one line with exit code 2."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

import typer
import typer.core

try:  # typer >= 0.20 bundles its own copy of click
    from typer._click.exceptions import UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import UsageError
from rich.console import Console
from rich.markup import escape

from peftbench.errors import UserError

out = Console(width=None if sys.stdout.isatty() else 120)  # pipes and logs get the whole table
err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)


class OneLineErrors(typer.core.TyperGroup):
    """Usage errors (a flag of the wrong type, a missing argument) as one line, exit 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except UsageError as e:
            where = f"; see: {e.ctx.command_path} --help" if e.ctx else ""
            err.print(f"[bold red]error:[/] {escape(e.format_message().rstrip('.'))}{where}", highlight=False, soft_wrap=True)
            raise SystemExit(2) from None
        except typer.Abort:  # end of input at a prompt
            raise SystemExit(130) from None
        raise SystemExit(rv if isinstance(rv, int) else 0)


app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True,
                  help="Fine-tune with PEFT methods and compare them fairly.")


def friendly(fn: Callable) -> Callable:
    """Bad input: one line on stderr, exit code 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as e:  # Ctrl-C: say what became of the run (runner raises Interrupted)
            run_id = getattr(e, "run_id", None)
            said = f"run {run_id} marked interrupted" if run_id else "no run was stored as done"
            err.print(f"interrupted: {escape(said)}; rerun the same command to resume", highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None

    return wrapper
