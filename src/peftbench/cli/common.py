"""What every command shares: the app, its consoles, and every failure as one line (cli/failures.py)."""

from __future__ import annotations

import functools
import os
import sys
import warnings
from typing import Any, Callable

import typer
import typer.core

try:  # typer >= 0.20 bundles its own copy of click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover
    from click.exceptions import NoArgsIsHelpError, UsageError
from rich.console import Console
from rich.text import Text

from peftbench.cli import failures

# markup=False: labels, paths and messages are the user's text, and '[/x]' in them is not rich markup.
out = Console(width=None if sys.stdout.isatty() else 120, markup=False)  # pipes and logs get the whole table
err = Console(stderr=True, width=None if sys.stderr.isatty() else 120, markup=False)
DEBUG = {"on": os.environ.get("PEFTBENCH_DEBUG", "") not in ("", "0")}  # set by --debug


def say_error(message: str) -> None:
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())  # a path may hold a newline
    err.print(Text.assemble(("error:", "bold red"), " ", line), highlight=False, soft_wrap=True)


class OneLineErrors(typer.core.TyperGroup):
    """Usage errors (a flag of the wrong type, a missing argument) as one line, exit 2."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except NoArgsIsHelpError:  # `peftbench`, `peftbench cache`: the help is printed, and is the answer
            raise SystemExit(0) from None
        except UsageError as e:
            where = f"; see: {e.ctx.command_path} --help" if e.ctx else ""
            say_error(f"{e.format_message().rstrip('.')}{where}")
            raise SystemExit(failures.INPUT) from None
        except typer.Abort:  # end of input at a prompt
            raise SystemExit(failures.INTERRUPTED) from None
        raise SystemExit(rv if isinstance(rv, int) else 0)


app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True,
                  help="Fine-tune with PEFT methods and compare them fairly.")


THIRD_PARTY = ("transformers", "peft", "torch", "accelerate", "datasets", "huggingface_hub", "sklearn", "gguf")


def quiet_libraries(verbose: bool) -> None:
    """The libraries' warnings (deprecations, peft's notices) are not the user's to act on: hidden unless
    --verbose, which shows each once."""
    if verbose:
        warnings.simplefilter("once")
        return
    for module in THIRD_PARTY:
        warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")


@app.callback()
def main_options(debug: bool = typer.Option(False, "--debug", help="Print the traceback of an internal error "
                                            "(also PEFTBENCH_DEBUG=1)."),
                 verbose: bool = typer.Option(False, "--verbose", help="Show the libraries' own warnings (each once); "
                                              "hidden otherwise.")) -> None:
    if debug:
        DEBUG["on"] = True
    quiet_libraries(verbose)


def friendly(fn: Callable) -> Callable:
    """Any failure: one line on stderr and an exit code (2: input or machine, 1: a bug); no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, SystemExit):
            raise
        except KeyboardInterrupt as e:  # Ctrl-C: say what became of the run (runner raises Interrupted)
            run_id = getattr(e, "run_id", None)
            said = f"run {run_id} marked interrupted" if run_id else "no run was stored as done"
            err.print(f"interrupted: {said}; rerun the same command to resume", highlight=False, soft_wrap=True)
            raise typer.Exit(failures.INTERRUPTED) from None
        except Exception as e:
            line, code = failures.describe(e)
            if code == failures.BUG and DEBUG["on"]:
                raise
            say_error(line)
            raise typer.Exit(code) from None

    return wrapper
