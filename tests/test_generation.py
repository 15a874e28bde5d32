"""Text-to-text tasks (summarization, table-to-text, distractors, seq2seq classification) on tiny models."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from conftest import make_rows, write_jsonl
from peftbench.config import GenerationSpec, parse_config
from peftbench.errors import UserError
from peftbench.runner import run
from peftbench.tasks import get_task
from peftbench.metrics import bleu, rouge, sentences_per_line
from peftbench.tasks.summarization import linearize_table

NAMES = ["bob", "alice", "carol", "dave"]
THINGS = ["car", "book", "train ticket", "lunch"]


def dialogue_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.sample(NAMES, 2)
        thing = rng.choice(THINGS)
        rows.append({
            "dialogue": f"person1 : {a} wants to buy a {thing} . person2 : okay {b} will call later",
            "summary": f"{a} wants a {thing} .",
            "references": [f"{a} wants a {thing} .", f"{a} asks about a {thing} ."],
            "table": [["name", "city"], [a, b]],
            "target": f"{a} and {b}",
            "article": f"{a} went to the office . {b} did not go", "question": "who went to the office ?",
            "answer": a, "distractors": [b, rng.choice([x for x in NAMES if x not in (a, b)])],
        })
    return rows


@pytest.fixture(scope="module")
def gen_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gen-data")
    for split, n, seed in (("train", 48, 1), ("validation", 8, 2), ("test", 8, 3)):
        write_jsonl(root / f"{split}.jsonl", dialogue_rows(n, seed))
    return root


def config(model: str, data: Path, kind: str, method: str = "lora", **task) -> dict:
    return {
        "model": {"name": model},
        "task": {"kind": kind, "data": {"source": str(data)}, "max_length": 48, "max_target_length": 12,
                 "generation": {"max_new_tokens": 8}, "samples": 3, **task},
        "method": {"name": method},
        "train": {"steps": 3, "batch_size": 8, "eval_batch_size": 8, "eval_every": 3},
    }


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5", "bart"])
def test_summarization_end_to_end(tiny_models, gen_data: Path, tmp_path: Path, arch: str) -> None:
    out = run(parse_config(config(tiny_models(arch), gen_data, "summarization")), tmp_path)
    r = out.row.result
    assert out.row.status == "done"
    assert set(r["test"]) >= {"rouge1", "rouge2", "rougeL", "rougeLsum", "loss"}
    assert r["metrics"] == ["rouge1", "rouge2", "rougeL", "rougeLsum"] and r["select_metric"] == "rougeL"
    assert r["costs"]["eval_flops"] > 0 and r["costs"]["train_flops"] > 0
    assert r["task"]["family"] == ("seq2seq" if arch in ("t5", "bart") else "decoder")
    assert len(r["samples"]) == 3 and {"input", "target", "untuned", "tuned"} <= set(r["samples"][0])
    preds = json.loads((out.row.folder / "predictions.json").read_text())
    assert len(preds["predictions"]) == 8 and all(isinstance(p, str) for p in preds["predictions"])
    assert preds["references"][0] == [dialogue_rows(8, 3)[0]["summary"]]


def test_decoder_loss_only_on_target_tokens(tiny_models, gen_data: Path) -> None:
    cfg = parse_config(config(tiny_models("gpt2"), gen_data, "summarization"))
    task = get_task("summarization")(cfg.task)
    task.load_data()
    task.load_model(cfg.model)
    row = task.codec.train_row("bob wants a car", "bob car")
    prompt = task.codec.prompt("bob wants a car")
    assert row["input_ids"][: len(prompt)] == prompt
    assert row["labels"][: len(prompt)] == [-100] * len(prompt)
    target = row["labels"][len(prompt) :]
    assert target == task.tokenizer("bob car", add_special_tokens=False)["input_ids"] + [task.tokenizer.eos_token_id]
    batch = task.codec.collate([row, task.codec.train_row("a", "b")])
    assert batch["input_ids"].shape[1] % 8 == 0 and (batch["labels"][1] != -100).sum() == 2  # "b" + eos


def test_seq2seq_source_is_truncated_not_the_template(tiny_models, gen_data: Path) -> None:
    cfg = parse_config(config(tiny_models("t5"), gen_data, "summarization", max_length=16))
    task = get_task("summarization")(cfg.task)
    task.load_data()
    task.load_model(cfg.model)
    ids = task.codec.prompt("bob " * 100)
    assert len(ids) == 16 and ids[-1] == task.tokenizer.eos_token_id  # T5's encoder input ends with </s>
    tail = task.tokenizer("Summary:", add_special_tokens=False)["input_ids"]
    assert ids[-1 - len(tail) : -1] == tail


@pytest.mark.parametrize("arch", ["t5", "llama"])
def test_table_to_text_end_to_end(tiny_models, gen_data: Path, tmp_path: Path, arch: str) -> None:
    out = run(parse_config(config(tiny_models(arch), gen_data, "table_to_text")), tmp_path)
    assert out.row.status == "done" and "rougeL" in out.row.result["test"]
    assert out.row.result["samples"][0]["input"].startswith("name | city")


def test_linearize_table_formats() -> None:
    want = "name | city\nbob | paris"
    assert linearize_table([["name", "city"], ["bob", "paris"]]) == want
    assert linearize_table([{"name": "bob", "city": "paris"}]) == want
    assert linearize_table({"name": ["bob"], "city": ["paris"]}) == want
    assert linearize_table("name,city\nbob,paris\n") == want
    assert linearize_table([["a|b", "x\n y"]]) == "a/b | x y"  # separators stay unambiguous
    with pytest.raises(ValueError):
        linearize_table(42)


@pytest.mark.parametrize("arch", ["bart", "gpt2"])
def test_distractors_end_to_end(tiny_models, gen_data: Path, tmp_path: Path, arch: str) -> None:
    out = run(parse_config(config(tiny_models(arch), gen_data, "distractors")), tmp_path)
    r = out.row.result
    assert out.row.status == "done"
    assert set(r["test"]) >= {"bleu1", "bleu2", "bleu3", "bleu4", "rougeL"}
    assert " ; " in r["samples"][0]["target"]  # several distractors, one target


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5", "bart"])
def test_classification_on_decoder_and_seq2seq(tiny_models, tiny_data: Path, tmp_path: Path, arch: str) -> None:
    raw = {"model": {"name": tiny_models(arch)},
           "task": {"kind": "classification", "data": {"source": str(tiny_data)}, "max_length": 32, "samples": 2},
           "method": {"name": "lora"}, "train": {"steps": 3, "batch_size": 8, "eval_batch_size": 16}}
    out = run(parse_config(raw), tmp_path)
    r = out.row.result
    assert out.row.status == "done" and 0.0 <= r["test"]["macro_f1"] <= 1.0
    assert r["samples"][0]["target"] in ("joy", "anger", "sadness")
    if arch in ("t5", "bart"):  # text-to-text: generated words are matched to a label, or count as wrong
        assert "unmatched" in r["test"]
        assert r["samples"][0]["tuned"] in ("joy", "anger", "sadness", "(no label)")


def test_seq2seq_label_matching(tiny_models, tiny_data: Path) -> None:
    cfg = parse_config({"model": {"name": tiny_models("t5")},
                        "task": {"kind": "classification", "data": {"source": str(tiny_data)}}})
    task = get_task("classification")(cfg.task)
    task.load_data()
    assert task.labels == ["anger", "joy", "sadness"]
    assert [task.match_label(t) for t in ("Joy.", " sadness", "ANGER!", "happy", "")] == [1, 2, 0, -1, -1]


def test_generation_defaults_stop_repetition_loops(tiny_models, gen_data: Path) -> None:
    """A model that always predicts one token loops under plain greedy decoding; the defaults break it."""
    cfg = parse_config(config(tiny_models("gpt2"), gen_data, "summarization"))
    task = get_task("summarization")(cfg.task)
    task.load_data()
    model, tok = task.load_model(cfg.model)
    loop_id = tok.convert_tokens_to_ids("ghana") if "ghana" in tok.get_vocab() else 10
    with torch.no_grad():  # tied head: logits = ln_f(h) . E, so make every output favour one token
        wte = model.transformer.wte.weight
        wte.copy_(torch.rand(wte.shape, generator=torch.Generator().manual_seed(0)) * 0.1)
        wte[:4] = 0.0  # specials last, so the decoded text shows every generated token
        wte[loop_id] = 1.0
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
    prompts = [task.codec.prompt("bob wants a car")]
    plain = GenerationSpec(max_new_tokens=20, repetition_penalty=1.0, no_repeat_ngram_size=0)
    looped = task.codec.generate(model, prompts, plain)[0].split()
    assert looped == [tok.convert_ids_to_tokens(loop_id)] * 20
    text = task.codec.generate(model, prompts, GenerationSpec(max_new_tokens=20))[0].split()
    grams = [tuple(text[i : i + 5]) for i in range(len(text) - 4)]
    assert len(grams) == len(set(grams)), "a 5-gram repeats under the default settings"
    runs = "".join("x" if w == looped[0] else "." for w in text).split(".")
    assert max(len(r) for r in runs) <= 5 and len(set(text)) > 2  # the loop is broken, repeatedly


def test_rouge_against_hand_computed_values() -> None:
    # pred "the cat sat" vs ref "the cat ran": 2 of 3 unigrams -> F1 2/3; bigram "the cat" 1 of 2 -> 1/2.
    r = rouge(["the cat sat"], [["the cat ran"]])
    assert r["rouge1"] == pytest.approx(2 / 3) and r["rouge2"] == pytest.approx(0.5) and r["rougeL"] == pytest.approx(2 / 3)
    # several references: the best one counts (an exact match gives 1).
    assert rouge(["the cat sat"], [["a dog ran", "the cat sat"]])["rouge1"] == pytest.approx(1.0)
    # mean over examples
    assert rouge(["a b", "c d"], [["a b"], ["x y"]])["rouge1"] == pytest.approx(0.5)
    assert sentences_per_line("One. Two! Three?") == "One.\nTwo!\nThree?"


def test_bleu_against_hand_computed_values() -> None:
    # hyp 6 tokens, 5 clipped unigram matches; 3 of 5 bigrams; brevity penalty 1 (equal lengths).
    b = bleu(["the cat sat on the mat"], [["the cat sat on a mat"]])
    assert b["bleu1"] == pytest.approx(5 / 6)
    assert b["bleu2"] == pytest.approx((5 / 6 * 3 / 5) ** 0.5)
    assert bleu(["a b c d"], [["x y", "a b c d"]])["bleu4"] == pytest.approx(1.0)  # best reference


def test_builtin_dialogsum_has_three_test_references() -> None:
    cfg = parse_config({"task": {"kind": "summarization", "data": {"source": "builtin:dialogsum"}}})
    task = get_task("summarization")(cfg.task)
    task.load_data()
    assert task.split_size("test") == 500
    assert len(task.splits["train"]) == 450 and len(task.splits["validation"]) == 50
    assert all(len(e.references) == 3 for e in task.splits["test"])
    assert all(len(e.references) == 1 for e in task.splits["train"])


@pytest.mark.parametrize("kind,arch,message", [
    ("summarization", "bert", "task 'summarization' cannot use model"),
    ("classification", "vit", "task 'classification' cannot use model"),
])
def test_family_refusals(tiny_models, gen_data: Path, tmp_path: Path, kind: str, arch: str, message: str) -> None:
    data = gen_data
    if kind == "classification":
        data = tmp_path / "cls"
        data.mkdir()
        for s, seed in (("train", 1), ("test", 2)):
            write_jsonl(data / f"{s}.jsonl", make_rows(20, seed))
    with pytest.raises(UserError, match=message):
        run(parse_config(config(tiny_models(arch), data, kind)), tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_head_refuses_generation_tasks(tiny_models, gen_data: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="method 'head' trains a task head"):
        run(parse_config(config(tiny_models("gpt2"), gen_data, "summarization", method="head")), tmp_path)


def test_bitfit_refuses_models_without_biases(tiny_models, gen_data: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="has none"):
        run(parse_config(config(tiny_models("t5"), gen_data, "summarization", method="bitfit")), tmp_path)


# -- through the CLI ---------------------------------------------------------------------


def test_cli_summarization_run_and_samples_shown(tiny_models, gen_data: Path, tmp_path: Path) -> None:
    from test_bad_input import invoke

    res = invoke("run", "--task", "summarization", "--model", tiny_models("bart"), "--data", gen_data,
                 "--column", "target=target", "--generation", "max_new_tokens=6", "--generation", "num_beams=2",
                 "--max-length", 48, "--max-target-length", 8, "--samples", 2, "--steps", 2, "--batch-size", 8,
                 "--results-dir", tmp_path, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    cfg = doc["result"]["task"]
    assert cfg["generation"]["num_beams"] == 2 and cfg["generation"]["max_new_tokens"] == 6
    assert doc["result"]["samples"][0]["target"] in {f"{a} and {b}" for a in NAMES for b in NAMES}
    shown = invoke("results", "show", doc["run_id"], "--results-dir", tmp_path)
    assert shown.exit_code == 0 and "sample predictions" in shown.stdout and "untuned" in shown.stdout


@pytest.mark.parametrize("args,words", [
    (["--generation", "num_beams=0"], ["task.generation.num_beams", "greater than or equal to 1"]),
    (["--generation", "top_p=1.5"], ["task.generation.top_p"]),
    (["--generation", "beams=4"], ["unknown config key", "task.generation.beams"]),
    (["--generation", "num_beams"], ["--generation", "KEY=VALUE"]),
    (["--column", "colour=x"], ["unknown role 'colour'"]),
    (["--column", "target=nope"], ["target column 'nope' is missing", "--column target=NAME"]),
    (["--generation", "temperature=0"], ["task.generation.temperature"]),
    (["--generation", "max_new_tokens=-1"], ["task.generation.max_new_tokens"]),
    (["--task", "summarise"], ["unknown task kind 'summarise'", "summarization"]),
    (["--prompt", "no placeholder"], ["{input}"]),
])
def test_cli_generation_bad_input(tiny_models, gen_data: Path, tmp_path: Path, args: list, words: list) -> None:
    from test_bad_input import assert_refused, invoke

    res = invoke("run", "--task", "summarization", "--model", tiny_models("gpt2"), "--data", gen_data,
                 "--steps", 1, "--results-dir", tmp_path / "r", *args)
    assert_refused(res, *words, results_dir=tmp_path / "r")


def test_cli_tasks_lists_families(tmp_path: Path) -> None:
    from test_bad_input import invoke

    res = invoke("tasks", "--json")
    docs = {d["task"]: d for d in json.loads(res.stdout)}
    assert docs["summarization"]["families"] == ["decoder", "seq2seq"]
    assert set(docs["classification"]["families"]) == {"encoder", "decoder", "seq2seq"}


def test_references_column_scores_but_target_trains(gen_data: Path) -> None:
    raw = config("unused", gen_data, "summarization")
    raw["task"]["data"]["references_column"] = "references"
    cfg = parse_config(raw)
    task = get_task("summarization")(cfg.task)
    task.load_data()
    e, row = task.splits["test"][0], dialogue_rows(8, 3)[0]
    assert e.target == row["summary"] and e.references == row["references"]


# -- in-context few-shot baseline ----------------------------------------------------------


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_few_shot_puts_demonstrations_in_every_prompt(tiny_models, gen_data: Path, tmp_path: Path, arch: str) -> None:
    raw = config(tiny_models(arch), gen_data, "summarization", method="few_shot", max_length=128)
    raw["method"]["params"] = {"k": 2}
    shot = run(parse_config(raw), tmp_path).row.result
    zero = run(parse_config({**raw, "method": {"name": "base"}}), tmp_path).row.result
    demo = shot["task"]["demonstrations"]
    assert demo["k"] == 2 and demo["context_tokens"] > 20 and demo["context_window"] == 256
    assert demo["window_share"] == pytest.approx(demo["context_tokens"] / 256)
    assert shot["costs"]["train_flops"] == 0 and shot["optimizer"] is None
    assert shot["costs"]["eval_flops"] > zero["costs"]["eval_flops"]  # the demonstrations are read every time

    cfg = parse_config(raw)
    task = get_task("summarization")(cfg.task)
    task.load_data()
    task.load_model(cfg.model)
    plain = task.codec.prompt("bob wants a car")
    task.demonstrate(2, seed=0)
    with_demos = task.codec.prompt("bob wants a car")
    assert len(with_demos) == len(plain) + demo["context_tokens"] and with_demos[-len(plain) + len(task.codec.prefix):] == plain[len(task.codec.prefix):]
    text = task.tokenizer.decode(task.codec.demos)
    assert text.count("summary") == 2  # two solved examples, each with its template


def test_few_shot_refusals(tiny_models, tiny_config: dict, gen_data: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="few_shot' prompts a text generator"):
        run(parse_config({**tiny_config, "method": {"name": "few_shot"}}), tmp_path / "a")
    raw = config(tiny_models("gpt2"), gen_data, "summarization", method="few_shot", max_length=24)
    raw["method"]["params"] = {"k": 8}
    with pytest.raises(UserError, match="demonstrations take .* tokens"):
        run(parse_config(raw), tmp_path / "c")
    assert not any((tmp_path / d).exists() for d in "ac")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_few_shot_classification_on_decoders_scores_label_names(tiny_models, tiny_data: Path, tmp_path: Path, arch: str) -> None:
    """A classification head reads no demonstrations: few_shot loads the LM and scores each label's tokens."""
    raw = {"model": {"name": tiny_models(arch)},
           "task": {"kind": "classification", "data": {"source": str(tiny_data)}, "max_length": 96, "samples": 2},
           "method": {"name": "few_shot", "params": {"k": 3}}, "train": {"eval_batch_size": 16}}
    r = run(parse_config(raw), tmp_path).row.result
    assert r["task"]["demonstrations"]["k"] == 3 and r["costs"]["params_trainable"] == 0
    assert 0.0 <= r["test"]["accuracy"] <= 1.0 and r["samples"][0]["tuned"] in ("joy", "anger", "sadness")

    from peftbench.runner import make_task, normalize

    cfg, m = normalize(parse_config(raw))
    task = make_task(cfg, m)
    task.load_data()
    model, tok = task.load_model(cfg.model)
    assert hasattr(model, "lm_head") and task.head_modules == [] and task.peft_task_type == "CAUSAL_LM"
    prompt = task.strategy.codec.prompt("happy glad day")
    scores = task.strategy.score_labels(model.eval(), [prompt], None)[0]
    with torch.no_grad():  # by hand: mean log-probability of each label's tokens after the prompt
        for k, ids in enumerate(task.strategy.label_ids):
            logp = torch.log_softmax(model(torch.tensor([prompt + ids])).logits[0].float(), -1)
            want = sum(float(logp[len(prompt) - 1 + t, ids[t]]) for t in range(len(ids))) / len(ids)
            assert float(scores[k]) == pytest.approx(want, abs=1e-4)
