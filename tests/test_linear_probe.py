"""linear_probe (issue 16 item 4): a logistic regression on frozen features, end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import numpy as np
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.methods.probe import set_head
from peftbench.store import Store

pytestmark = pytest.mark.timeout(300)


def cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def common(tiny_config: dict, results: Path) -> list[str]:
    return ["--model", tiny_config["model"]["name"], "--data", tiny_config["task"]["data"]["source"], "--max-length", "32",
            "--results-dir", str(results)]


def test_linear_probe_end_to_end(tiny_config: dict, tmp_path: Path) -> None:
    res = cli("run", "-m", "linear_probe", *common(tiny_config, tmp_path), "--json")
    assert res.exit_code == 0, res.output
    run_id = json.loads(res.output[res.output.index("{"):])["run_id"]
    store = Store(tmp_path)
    row = store.get(run_id)
    result, costs = row.result, row.result["costs"]
    assert row.done and row.method == "linear_probe"
    assert row.config["train"]["lr"] is None and row.config["method"]["params"]["cs"]  # no rate: C is its setting
    assert set(result["test"]) >= {"accuracy", "macro_f1"}
    # its FLOPs are the forward passes over train and validation, counted once each
    assert costs["train_flops"] == costs["train_forward_flops"] > 0 and costs["train_backward_flops"] == 0
    assert costs["params_trainable"] == 0 and costs["train_seconds"] > 0
    preds = store.predictions(run_id)
    assert preds is not None and len(preds.predictions) == len(preds.references) == 24
    # the artifact: a linear head as safetensors, and the C grid's validation scores
    adapter = row.adapter
    head = load_file(str(adapter / "head.safetensors"))
    assert head["classifier.weight"].shape == (3, 32) and head["classifier.bias"].shape == (3,)
    probe = json.loads((adapter / "probe.json").read_text())
    assert f"{probe['C']:g}" in probe["validation"]
    # the head computes the fitted regression: its validation score is the chosen C's
    assert result["validation"]["macro_f1"] == pytest.approx(max(probe["validation"].values()))
    assert probe["validation"][f"{probe['C']:g}"] == max(probe["validation"].values())


@pytest.mark.parametrize("classes", [2, 4])
def test_the_fitted_head_predicts_what_the_regression_predicts(classes: int) -> None:
    """The standardisation folded into the head's weights: argmax of its logits is the regression's prediction.
    (Synthetic features: the tiny BERT's tokenizer maps the test words to [UNK], so its features carry no signal.)"""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    y = rng.integers(0, classes, 300)
    x = rng.normal(size=(300, 16)) * rng.uniform(0.1, 50, 16) + rng.normal(size=16) * 10
    x[:, :classes] += 3 * np.eye(classes)[y] * x[:, :classes].std(0)
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=1.0, max_iter=2000).fit(scaler.transform(x), y)
    head = torch.nn.Linear(16, classes).double()
    set_head(head, clf, scaler, classes)
    with torch.no_grad():
        got = head(torch.as_tensor(x)).argmax(-1).numpy()
    assert (got == clf.predict(scaler.transform(x))).all()
    assert (got == y).mean() > 0.6


def test_linear_probe_predicts_and_its_cs_are_checked(tiny_config: dict, tmp_path: Path) -> None:
    res = cli("run", "-m", "linear_probe", "--param", "cs=[0.5]", *common(tiny_config, tmp_path), "--json")
    assert res.exit_code == 0, res.output
    run_id = json.loads(res.output[res.output.index("{"):])["run_id"]
    assert json.loads((Store(tmp_path).get(run_id).adapter / "probe.json").read_text())["C"] == 0.5
    pred = cli("predict", run_id, "happy glad sunny", "--results-dir", tmp_path)
    assert pred.exit_code == 0, pred.output
    bad = cli("run", "-m", "linear_probe", "--param", "cs=[]", *common(tiny_config, tmp_path / "bad"))
    assert bad.exit_code == 2 and "cs" in bad.output and "Traceback" not in bad.output


def test_the_refusal_names_a_method_that_runs(tiny_models, tiny_data: Path, tmp_path: Path) -> None:
    """Its refusal on seq2seq classification once said "use head", which that setup refuses too."""
    from test_bad_input import assert_refused
    from test_multiple_choice import data_dir

    res = tmp_path / "r"
    quick = ["--steps", "1", "--max-length", "32", "--results-dir", res, "-m"]
    t5 = ["run", "--model", tiny_models("t5"), "--data", tiny_data, *quick]
    assert_refused(cli(*t5, "linear_probe"), "have none", "-m lora", results_dir=res)
    assert cli(*t5, "lora").exit_code == 0
    mc = ["run", "--model", tiny_models("bert"), "--task", "multiple_choice", "--data", data_dir(tmp_path / "mc"), *quick]
    assert_refused(cli(*mc, "linear_probe"), "-m head")
    assert cli(*mc, "head").exit_code == 0
