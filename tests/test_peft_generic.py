"""Issue 17 items 1-2: every peft tuner is a method (or listed as unsuited, with why); targets per family."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import peft
import pytest
import torch
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING
from typer.testing import CliRunner

from peftbench import methods
from peftbench.cli import app
from peftbench.config import parse_config
from peftbench.errors import UserError
from peftbench.export import rebuild
from peftbench.measure.flops import FlopMeter
from peftbench.methods import REGISTRY, get_method
from peftbench.methods.base import Context
from peftbench.methods.peft_generic import UNSUITED, GenericTuner, register_all
from peftbench.store import Store
from peftbench.train.budget import Budget
from peftbench.train.loop import train
from test_bad_input import assert_refused
from test_methods import build

GENERIC = sorted(n for n, c in REGISTRY.items() if issubclass(c, GenericTuner))
# peft's defaults suit 768-wide layers; the tiny BERT's are 32 and 64 wide.
TINY = {"c3a": {"block_size": 8}, "miss": {"r": 8}, "shira": {"r": 4}, "road": {"group_size": 8},
        "vblora": {"vector_length": 8}, "waveft": {"n_frequency": 100}}


def methods_json() -> dict[str, dict]:
    res = CliRunner().invoke(app, ["methods", "--json"])
    assert res.exit_code == 0, res.output
    return {d["method"]: d for d in json.loads(res.stdout)}


def test_the_issues_tuners_are_methods_and_hand_written_ones_stay() -> None:
    named = {"oft", "boft", "hra", "miss", "fourierft", "c3a", "randlora", "shira", "road", "delora", "gralora",
             "waveft", "vblora", "tinylora"}
    assert named <= set(GENERIC)
    for hand in ("lora", "adalora", "ia3", "vera", "loha", "lokr", "prompt", "prefix", "p_tuning", "ln_tuning"):
        assert not issubclass(REGISTRY[hand], GenericTuner), hand
    assert not {"prompt_tuning", "prefix_tuning", *UNSUITED} & set(REGISTRY)
    peft_names = {str(t.value).lower() for t in PEFT_TYPE_TO_CONFIG_MAPPING}
    accounted = set(REGISTRY) | set(UNSUITED) | {"prompt_tuning", "prefix_tuning"}
    assert peft_names <= accounted, f"peft tuners neither offered nor listed: {peft_names - accounted}"


def test_params_defaults_and_help_come_from_the_peft_dataclass() -> None:
    fields = {f.name: f for f in dataclasses.fields(peft.OFTConfig)}
    params = REGISTRY["oft"].Params.model_fields
    assert "oft_block_size" in params and "modules_to_save" not in params and "task_type" not in params
    assert params["oft_block_size"].default == fields["oft_block_size"].default
    assert params["oft_block_size"].description == " ".join(fields["oft_block_size"].metadata["help"].split())
    listed = methods_json()["oft"]
    assert listed["params"]["oft_block_size"]["help"] and listed["lr_tuned"] is True  # chosen on validation (tuned_lrs)
    assert listed["default_lr"] == 6e-3  # not-yet-tuned tuners take LoRA's: the test below


def test_stored_params_rebuild_the_same_peft_config() -> None:
    """A run stores every hyper-parameter spelled out (JSON); reading them back gives the same method and config."""
    for method in GENERIC:
        first = get_method(method)({})
        stored = json.loads(json.dumps(first.normalized_params()))
        again = get_method(method)(stored)
        assert again.normalized_params() == stored, method
        ctx = Context("SEQ_CLS", "m", 2)
        assert again.peft_config(ctx).to_dict() == first.peft_config(ctx).to_dict(), method


def test_methods_lists_unsuited_tuners_with_the_reason(monkeypatch) -> None:
    from peftbench.cli import common

    listed = methods_json()
    for name in ("xlora", "poly", "multitask_prompt_tuning", "cpt", "trainable_tokens", "cartridge", "mixed", "shadow"):
        assert listed[name]["unsuited"] == UNSUITED[name] and not listed[name]["params"]
    monkeypatch.setattr(common.out, "width", 2000)  # one table row per line
    monkeypatch.setattr(REGISTRY["hra"], "lr_tuned", False)  # as a tuner the procedure has not reached yet
    monkeypatch.setattr(REGISTRY["hra"], "default_lr", REGISTRY["lora"].default_lr)
    rows = CliRunner().invoke(app, ["methods"]).output.splitlines()
    oft = next(r for r in rows if r.startswith("│ oft "))
    assert "│ 0.006 " in oft and "r=0 >=0" in oft  # peft's r=0: blocks sized by oft_block_size; its tuned rate
    hra = next(r for r in rows if r.startswith("│ hra "))
    assert "(LoRA's; not tuned)" in hra
    poly = next(r for r in rows if r.startswith("│ poly "))
    assert "not offered" in poly and UNSUITED["poly"] in poly


@dataclasses.dataclass
class FakeConfig(peft.LoraConfig):
    """A tuner from a future peft release (LoRA underneath, so it trains)."""

    fake_scale: float = dataclasses.field(default=1.5, metadata={"help": "how much the fake tuner scales"})


def test_a_new_peft_tuner_appears_without_code_changes(monkeypatch, tiny_model: str, tiny_data: Path, tmp_path: Path) -> None:
    monkeypatch.setitem(PEFT_TYPE_TO_CONFIG_MAPPING, "FAKETUNER", FakeConfig)
    registry = dict(REGISTRY)
    monkeypatch.setattr(methods, "REGISTRY", registry)
    assert set(register_all(registry)) == {*GENERIC, "faketuner"}
    listed = methods_json()["faketuner"]
    assert listed["params"]["fake_scale"] == {"default": 1.5, "type": "<class 'float'>", "limits": "",
                                              "help": "how much the fake tuner scales"}
    res = CliRunner().invoke(app, ["run", "-m", "faketuner", "--model", tiny_model, "--data", str(tiny_data), "--steps", "2",
                                   "--max-length", "32", "--batch-size", "8", "--results-dir", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["result"]["costs"]["steps"] == 2
    assert_refused(CliRunner().invoke(app, ["run", "-m", "faketuner", "-p", "fake_scal=2", "--model", tiny_model,
                                            "--data", str(tiny_data), "--results-dir", str(tmp_path)]), "did you mean 'fake_scale'")


@pytest.mark.parametrize("method", ["oft", "hra", "fourierft"])
def test_cli_trains_saves_and_reloads_identically(method: str, tiny_model: str, tiny_data: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["run", "-m", method, "--model", tiny_model, "--data", str(tiny_data), "--steps", "2",
                                   "--max-length", "32", "--batch-size", "8", "--results-dir", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    row = Store(tmp_path).get(json.loads(res.stdout)["run_id"])
    assert row.config["method"]["name"] == method and row.result["costs"]["steps"] == 2
    task, model, m, _ = rebuild(row)
    assert isinstance(model, peft.PeftModel) and model.peft_config["default"].peft_type.value.lower() == method
    got = task.evaluate(model, "test", parse_config(row.config).train.eval_batch_size)
    stored = json.loads((row.folder / "predictions.json").read_text())["predictions"]
    assert list(got.predictions) == stored


@pytest.mark.parametrize("method", GENERIC)
def test_every_generic_tuner_trains_its_own_parameters_and_reloads(method: str, tiny_config: dict, tmp_path: Path) -> None:
    """On the tiny BERT: two steps change the tuner's parameters and the head only; reloading gives the same logits."""
    if method == "adaption_prompt":
        with pytest.raises(UserError, match="adapts decoder models"):
            build(tiny_config, method, 2, TINY.get(method))
        return
    cfg, m, task, model = build(tiny_config, method, 2, TINY.get(method))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, m, task, cfg.train, 5e-2, Budget("steps", 2), torch.device("cpu"), FlopMeter(), FlopMeter())
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert any("classifier" in n for n in changed) and any("classifier" not in n for n in changed), sorted(changed)
    prefix = PEFT_TYPE_TO_PREFIX_MAPPING[model.peft_config["default"].peft_type]
    stray = {n for n in changed if prefix not in n and "classifier" not in n}
    assert not stray, f"{method} changed parameters it should not: {sorted(stray)[:5]}"
    m.save(model, tmp_path)
    torch.manual_seed(7)
    fresh, _ = task.load_model(cfg.model)
    reloaded = get_method(method)(cfg.method.params).load(fresh, tmp_path)
    batch = next(task.train_batches(8, seed=5))
    model.eval(), reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reloaded(**batch).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize(("params", "words"), [
    (["oft_blok_size=4"], ["has no hyper-parameter 'oft_blok_size'", "did you mean 'oft_block_size'"]),
    (["rank=4", "module_dropout=1.5"], ["'module_dropout'", "less than 1"]),
    (["oft_block_size=four"], ["'oft_block_size'", "integer"]),
    (["r=0", "oft_block_size=0"], ["bad oft hyper-parameters"]),  # peft's own check, as one line
])
def test_bad_parameters_are_one_line_and_exit_2(params: list[str], words: list[str], tiny_model: str, tiny_data: Path, tmp_path: Path) -> None:
    args = [a for p in params for a in ("-p", p)]
    res = CliRunner().invoke(app, ["run", "-m", "oft", *args, "--model", tiny_model, "--data", str(tiny_data),
                                   "--results-dir", str(tmp_path / "r")])
    assert_refused(res, *words)
    assert not (tmp_path / "r").exists()


def test_shapes_that_do_not_fit_are_refused_in_one_line(tiny_config: dict) -> None:
    with pytest.raises(UserError) as e:
        build(tiny_config, "miss", 2)
    assert "miss cannot adapt this bert model" in str(e.value) and "--param" in str(e.value) and "\n" not in str(e.value)


def _vit(tiny_models, method: str):
    from transformers import ViTForImageClassification

    vit = tiny_models("vit")
    model = ViTForImageClassification.from_pretrained(vit)
    return get_method(method)({}).apply(model, Context(None, vit, 2, family="vision", head_modules=["classifier"]))


# adamss: peft 0.21 maps ViT to query/value, names transformers 5 no longer uses; all-linear instead.
@pytest.mark.parametrize(("method", "marker"), [("ia3", "ia3_l"), ("vera", "vera_lambda_"), ("oft", "oft_R"), ("adamss", "adamss_")])
def test_vit_takes_all_linear_where_peft_has_no_default(method: str, marker: str, tiny_models) -> None:
    model = _vit(tiny_models, method)
    adapted = {n for n, p in model.named_parameters() if marker in n and p.requires_grad}
    for layer in ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"):  # every linear layer of both blocks
        assert sum(f".{layer}." in n for n in adapted) >= 2, (layer, sorted(adapted))
    assert not any("classifier" in n for n in adapted)  # the head trains whole, not adapted
    out = model(pixel_values=torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1]))
    out.loss.backward()
    assert any(p.grad is not None for n, p in model.named_parameters() if marker in n)


def test_gpt2_conv1d_is_refused_naming_what_works(tiny_models) -> None:
    from transformers import AutoModelForSequenceClassification

    gpt2 = tiny_models("gpt2")
    model = AutoModelForSequenceClassification.from_pretrained(gpt2, num_labels=3)
    with pytest.raises(UserError) as e:
        get_method("oft")({}).apply(model, Context("SEQ_CLS", gpt2, 2, family="decoder", head_modules=["score"]))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("oft does not support this gpt2 model's Conv1D layers")
    works = msg.split("; use ", 1)[1]
    assert "lora, ia3" in works and "fourierft" in works and "oft" not in works.replace("or a model", "")
    assert works.endswith("or a model with nn.Linear layers")


@pytest.mark.parametrize("method", [n for n in GENERIC if n != "adaption_prompt"])
def test_mergeable_tuners_merge_to_the_same_outputs_and_the_rest_refuse(method: str, tiny_config: dict) -> None:
    cfg, m, task, model = build(tiny_config, method, 2, TINY.get(method))
    prefix = PEFT_TYPE_TO_PREFIX_MAPPING[model.peft_config["default"].peft_type]
    with torch.no_grad():  # a trained-looking update, so merging has something to fold in
        for n, p in model.named_parameters():
            if p.requires_grad and prefix in n:
                p.add_(0.05 * torch.randn_like(p))
    batch = next(task.train_batches(8, seed=5))
    model.eval()
    with torch.no_grad():
        want = model(**batch).logits
    if not m.can_merge:
        with pytest.raises(UserError, match=f"method '{method}' cannot be merged"):
            m.merge(model)
        return
    plain = m.merge(model)
    assert not isinstance(plain, peft.PeftModel) and not any(prefix in n for n, _ in plain.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, want, rtol=0, atol=1e-4)


def test_export_merges_a_generic_tuner_through_the_cli(tiny_model: str, tiny_data: Path, tmp_path: Path) -> None:
    from peftbench.cli import app as cli

    res = CliRunner().invoke(cli, ["run", "-m", "hra", "--model", tiny_model, "--data", str(tiny_data), "--steps", "2",
                                   "--max-length", "32", "--batch-size", "8", "--results-dir", str(tmp_path / "r"), "--json"])
    assert res.exit_code == 0, res.output
    run_id = json.loads(res.stdout)["run_id"]
    res = CliRunner().invoke(cli, ["export", run_id, str(tmp_path / "m"), "--merge", "--results-dir", str(tmp_path / "r"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["merged"] and json.loads(res.stdout)["max_abs_diff"] <= 1e-4
    assert methods_json()["lily"]["can_merge"] is False and methods_json()["oft"]["can_merge"] is True



def test_adaption_prompt_without_its_sizes_names_them_and_the_layer_count(tiny_models, tmp_path: Path) -> None:
    """peft gives adapter_len and adapter_layers no default: one line naming both and how many layers there are."""
    from conftest import write_jsonl
    from peftbench.cli import app as cli
    from test_generation import dialogue_rows

    (tmp_path / "d").mkdir()
    for split, n in (("train", 8), ("validation", 4), ("test", 4)):
        write_jsonl(tmp_path / "d" / f"{split}.jsonl", dialogue_rows(n, 1))
    res = CliRunner().invoke(cli, ["run", "--model", tiny_models("llama"), "--task", "summarization", "--data",
                                   str(tmp_path / "d"), "-m", "adaption_prompt", "--steps", "1",
                                   "--results-dir", str(tmp_path / "r")])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    line = res.output.strip().splitlines()[-1]
    assert "adapter_len and adapter_layers" in line and "--param adapter_len=N" in line and "this model has 2" in line
    assert not (tmp_path / "r" / "runs").exists() or not any((tmp_path / "r" / "runs").iterdir())


def test_a_tuner_without_modules_to_save_refuses_a_task_head() -> None:
    with pytest.raises(UserError) as e:
        get_method("adaption_prompt")({}).check(Context("SEQ_CLS", "m", 2, family="decoder", head_modules=["score"]))
    assert "cannot train this task's new head" in str(e.value) and "\n" not in str(e.value)


def test_adaption_prompt_trains_a_decoders_generation_and_reloads(tiny_models, tmp_path: Path) -> None:
    from conftest import write_jsonl
    from peftbench.runner import run
    from test_generation import config, dialogue_rows

    (tmp_path / "d").mkdir()
    for split, n in (("train", 16), ("test", 4)):
        write_jsonl(tmp_path / "d" / f"{split}.jsonl", dialogue_rows(n, 1))
    raw = config(tiny_models("llama"), tmp_path / "d", "summarization", method="adaption_prompt", samples=0)
    raw["method"]["params"] = {"adapter_len": 4, "adapter_layers": 1}  # the tiny Llama has 2 layers
    row = run(parse_config({**raw, "train": {**raw["train"], "steps": 2, "eval_every": 2}}), tmp_path / "r").row
    assert row.status == "done"
    task, model, _, _ = rebuild(row)
    got = task.evaluate(model, "test", 8).predictions
    assert list(got) == json.loads((row.folder / "predictions.json").read_text())["predictions"]


def test_tuned_rates_become_defaults_and_a_tuner_that_never_learned_gets_none(monkeypatch, tiny_model: str,
                                                                               tiny_data: Path, tmp_path: Path) -> None:
    """Issue 17 item 4: a rate chosen on validation (methods/tuned_lrs.py) is the tuner's default; a tuner that
    learned at no rate tried has no default: `peftbench methods` says so with the figure, and a run needs --lr."""
    from peftbench.methods import tuned_lrs

    monkeypatch.setattr(tuned_lrs, "MEASURED", {"oft": tuned_lrs.Tuned(6e-3, 0.61, (6.67e-4, 2e-3, 6e-3, 1.8e-2)),
                                                "hra": tuned_lrs.Tuned(None, 0.15, (6.67e-4, 2e-3, 6e-3))})
    registry = dict(REGISTRY)
    monkeypatch.setattr(methods, "REGISTRY", registry)
    register_all(registry)
    assert registry["oft"].default_lr == 6e-3 and registry["oft"].lr_tuned
    assert registry["fourierft"].default_lr == 2e-3 and not registry["fourierft"].lr_tuned  # not yet tuned: LoRA's
    listed = methods_json()
    assert listed["hra"]["default_lr"] is None and listed["hra"]["no_learn"] == 0.15
    table = CliRunner().invoke(app, ["methods"]).output  # the cell folds at 120 columns
    assert "none: learned" in table
    args = ["run", "-m", "hra", "--model", tiny_model, "--data", str(tiny_data), "--steps", "1", "--max-length", "32",
            "--results-dir", str(tmp_path)]
    assert_refused(CliRunner().invoke(app, args), "has no default learning rate: it learned at no rate tried")
    res = CliRunner().invoke(app, [*args, "--lr", "1e-3"])
    assert res.exit_code == 0, res.output
