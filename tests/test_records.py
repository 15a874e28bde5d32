"""Issue 15 item 7: stored configs name the data used, third-party warnings stay hidden unless --verbose,
latency axes read in s/ms (not "kms")."""

from __future__ import annotations

import warnings

from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.cli.common import quiet_libraries
from peftbench.store import Store


def test_a_run_on_files_names_them_as_its_source(tiny_model, tiny_data, tmp_path):
    files = [str(tiny_data / f"{s}.jsonl") for s in ("train", "validation", "test")]
    res = CliRunner().invoke(app, ["run", "--model", tiny_model, "--train-file", files[0], "--validation-file", files[1],
                                   "--test-file", files[2], "--max-length", "32", "--steps", "1", "--results-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    row = Store(tmp_path).list("done")[0]
    assert row.config["task"]["data"]["source"] == " + ".join(files)  # not the default builtin:tweet_eval_emotion
    again = CliRunner().invoke(app, ["run", "--model", tiny_model, "--train-file", files[0], "--validation-file", files[1],
                                     "--test-file", files[2], "--max-length", "32", "--steps", "1", "--results-dir", str(tmp_path)])
    assert "already done" in again.output  # the hash is the config's own: the same command finds it


def test_library_warnings_are_hidden_unless_verbose():
    def emit() -> list[warnings.WarningMessage]:
        with warnings.catch_warnings(record=True) as seen:
            warnings.resetwarnings()
            yield_filters()
            for _ in range(2):
                warnings.warn_explicit("peft says", UserWarning, "tuner.py", 7, module="peft.tuners.lora")
            warnings.warn_explicit("ours", UserWarning, "x.py", 1, module="peftbench.runner")
        return seen

    mode = {}

    def yield_filters() -> None:
        quiet_libraries(mode["verbose"])

    mode["verbose"] = False
    assert [str(w.message) for w in emit()] == ["ours"]
    mode["verbose"] = True
    assert [str(w.message) for w in emit()] == ["peft says", "ours"]  # each once
    assert CliRunner().invoke(app, ["--verbose", "methods", "--json"]).exit_code == 0


def test_latency_axes_are_not_kilo_milliseconds():
    from matplotlib.ticker import EngFormatter

    from peftbench.report.plots import axis_values

    xs, unit = axis_values([45.0, 1032.0], "ms")
    fmt = EngFormatter(unit=unit)
    assert [fmt(x) for x in xs] == ["45 ms", "1.032 s"]
    assert EngFormatter(unit="ms")(1032.0) == "1.032 kms"  # what the axis read before
    assert axis_values([3.0], "B") == ([3.0], "B")
