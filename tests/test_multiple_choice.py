"""Multiple choice: data formats and refusals, encoder classifier, log-likelihood scoring, end to end."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers.processors import TemplateProcessing
from transformers import AutoTokenizer
from typer.testing import CliRunner

from peftbench.config import parse_config
from peftbench.errors import UserError
from peftbench.measure.flops import FlopMeter
from peftbench.methods import get_method
from peftbench.methods.base import Context
from peftbench.runner import normalize
from peftbench.tasks import get_task
from peftbench.tasks.multiple_choice import MultipleChoice, choice_logprobs
from peftbench.train.budget import Budget
from peftbench.train.loop import train
from conftest import WORDS, write_jsonl

pytestmark = pytest.mark.timeout(120)

COLOURS = {"joy": "green", "anger": "red", "sadness": "blue"}  # the answer is the colour of the mood
OTHER = ["yes", "no", "okay"]  # a fourth choice that is never right


def make_rows(n: int, seed: int, style: str = "csqa") -> list[dict]:
    """Questions of two mood words; choices are the three colours plus a distractor."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        mood = rng.choice(list(WORDS))
        question = f"question : {' '.join(rng.sample(WORDS[mood], 2))} ?"
        texts = [*COLOURS.values(), rng.choice(OTHER)]
        rng.shuffle(texts)
        k = texts.index(COLOURS[mood])
        if style == "csqa":
            rows.append({"question": question, "choices": {"label": list("ABCD"), "text": texts}, "answerKey": "ABCD"[k]})
        elif style == "race":
            rows.append({"article": "the day was so very " + " ".join(rng.sample(WORDS[mood], 2)), "question": "it was ?",
                         "options": texts, "answer": "ABCD"[k]})
        elif style == "index":
            rows.append({"question": question, "choices": texts, "answerKey": k})
        else:  # the answer given as the choice's text
            rows.append({"question": question, "choices": texts, "answerKey": texts[k]})
    return rows


def data_dir(root: Path, style: str = "csqa", n: int = 40) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_jsonl(root / "train.jsonl", make_rows(n, 1, style))
    write_jsonl(root / "validation.jsonl", make_rows(8, 2, style))
    write_jsonl(root / "test.jsonl", make_rows(10, 3, style))
    return root


@pytest.fixture(scope="module")
def mc_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return data_dir(tmp_path_factory.mktemp("mc-data"))


def config(model: str, source: Path | str, **data: object) -> dict:
    return {
        "model": {"name": model},
        "task": {"kind": "multiple_choice", "data": {"source": str(source), **data}, "max_length": 32},
        "method": {"name": "lora"},
        "train": {"steps": 2, "batch_size": 8, "eval_batch_size": 16, "eval_every": 2, "select_metric": "accuracy"},
    }


def make_task(raw: dict) -> MultipleChoice:
    task = get_task("multiple_choice")(parse_config(raw).task)
    task.load_data()
    return task


def train_and_evaluate(raw: dict, method: str = "lora"):
    """load data + model, apply the method, train a few steps, evaluate the test split."""
    raw = {**raw, "method": {"name": method}}
    cfg, m = normalize(parse_config(raw))
    task = get_task(cfg.task.kind)(cfg.task)
    task.load_data()
    torch.manual_seed(0)
    model, _ = task.load_model(cfg.model)
    ctx = Context(task.peft_task_type, cfg.model.name, cfg.train.steps, family=task.family,
                  head_modules=list(task.head_modules))
    m.check(ctx)
    model = m.apply(model, ctx)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    meter = FlopMeter()
    out = train(model, m, task, cfg.train, cfg.train.lr, Budget("steps", cfg.train.steps), torch.device("cpu"), meter, FlopMeter())
    moved = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    eval_meter = FlopMeter()
    res = task.evaluate(model, "test", 16, eval_meter)
    return task, model, out, res, moved, meter, eval_meter


def check_result(task: MultipleChoice, res, n: int = 10) -> None:
    assert len(res.predictions) == n == res.examples
    assert all(isinstance(p, int) and 0 <= p < task.num_choices for p in res.predictions)
    assert res.references == task.splits["test"]["answer"][:n]
    assert set(res.metrics) == {"accuracy", "loss"}
    assert 0.0 <= res.metrics["accuracy"] <= 1.0 and res.metrics["loss"] > 0


# -- data ------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["csqa", "index", "text"])
def test_answer_as_label_index_or_text(tmp_path: Path, style: str) -> None:
    task = make_task(config("unused", data_dir(tmp_path, style)))
    rows = make_rows(40, 1, style)
    texts = [r["choices"]["text"] if style == "csqa" else r["choices"] for r in rows]
    assert task.splits["train"]["choices"] == texts
    key = {"csqa": lambda r, t: "ABCD".index(r["answerKey"]), "index": lambda r, t: r["answerKey"],
           "text": lambda r, t: t.index(r["answerKey"])}[style]
    assert task.splits["train"]["answer"] == [key(r, t) for r, t in zip(rows, texts)]
    assert task.num_choices == 4 and task.train_size == 40


def test_race_style_rows_via_column_settings(tmp_path: Path) -> None:
    root = data_dir(tmp_path, "race")
    task = make_task(config("unused", root, choices_column="options", answer_column="answer", text_column="article"))
    assert task.splits["train"]["context"][0].startswith("the day was so very")
    assert task.num_choices == 4
    # ... and found without settings: options / answer / article are looked for too.
    auto = make_task(config("unused", root))
    assert auto.splits == task.splits
    assert auto.describe()["columns"] == {"question": "question", "choices": "options", "answer": "answer", "text": "article"}


def test_builtin_commonsense_qa() -> None:
    task = make_task(config("unused", "builtin:commonsense_qa"))
    sizes = {s: len(c["answer"]) for s, c in task.splits.items()}
    assert sizes == {"train": 900, "validation": 100, "test": 221}  # validation carved from the 1000 train rows
    assert task.num_choices == 5
    assert task.column("answer") == "answerKey" and task.column("text") is None
    inp, target = task.example("test", 0)
    assert " | A) " in inp and " E) " in inp and target[1:3] == ") "
    assert target[3:] in task.splits["test"]["choices"][0]


def test_builtin_split_is_reproducible() -> None:
    """The README's procedure gives the shipped files from the shared dev set, when that is at hand."""
    source = Path(__file__).resolve().parents[2] / "shared/datasets/commonsense_qa/validation.jsonl"
    if not source.is_file():
        pytest.skip("the shared CommonsenseQA dev set is not here")
    folder = Path(__file__).resolve().parents[1] / "src/peftbench/data/commonsense_qa"
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    random.Random(0).shuffle(lines)
    assert (folder / "train.jsonl").read_text(encoding="utf-8") == "".join(lines[:1000])
    assert (folder / "test.jsonl").read_text(encoding="utf-8") == "".join(lines[1000:])


def bad_rows(tmp_path: Path, change) -> Path:
    root = data_dir(tmp_path)
    rows = make_rows(10, 3)
    change(rows)
    write_jsonl(root / "test.jsonl", rows)
    return root


def refusal(raw: dict) -> str:
    with pytest.raises(UserError) as err:
        make_task(raw)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_refuses_different_numbers_of_choices(tmp_path: Path) -> None:
    def drop(rows):
        rows[4]["choices"] = {"label": list("ABC"), "text": rows[4]["choices"]["text"][:3]}
        rows[4]["answerKey"] = "A"
    msg = refusal(config("unused", bad_rows(tmp_path, drop)))
    assert "same number of choices" in msg and "test row 5" in msg and "has 3" in msg and "has 4" in msg
    assert "drop those rows or pad" in msg


def test_refuses_an_answer_that_matches_no_choice(tmp_path: Path) -> None:
    def wrong(rows):
        rows[2]["answerKey"] = "F"
    msg = refusal(config("unused", bad_rows(tmp_path, wrong)))
    assert "'F'" in msg and "matches no choice" in msg and "test row 3" in msg and "A, B, C, D" in msg


def test_refuses_an_index_out_of_range(tmp_path: Path) -> None:
    root = data_dir(tmp_path, "index")
    rows = make_rows(10, 3, "index")
    rows[0]["answerKey"] = 4
    write_jsonl(root / "test.jsonl", rows)
    assert "matches no choice" in refusal(config("unused", root))


def test_refuses_fewer_than_two_choices(tmp_path: Path) -> None:
    root = tmp_path / "one"
    rows = [{"question": "question : happy ?", "choices": ["green"], "answerKey": 0}] * 6
    for split in ("train", "validation", "test"):
        write_jsonl(root.mkdir(exist_ok=True) or root / f"{split}.jsonl", rows)
    msg = refusal(config("unused", root))
    assert "1 choice" in msg and "at least 2" in msg


def test_refuses_missing_columns(tmp_path: Path) -> None:
    msg = refusal(config("unused", data_dir(tmp_path), answer_column="gold"))
    assert "answer column 'gold' is missing" in msg and "answerKey" in msg  # lists the columns there are
    root = tmp_path / "noq"
    for split in ("train", "validation", "test"):
        write_jsonl(root.mkdir(exist_ok=True) or root / f"{split}.jsonl",
                    [{"query": "x", "choices": ["a", "b"], "answerKey": "A"}] * 4)
    assert "question column 'question' is missing" in refusal(config("unused", root))


def test_refuses_choices_that_are_not_a_list(tmp_path: Path) -> None:
    def flat(rows):
        for r in rows:
            r["choices"] = "red"
    msg = refusal(config("unused", bad_rows(tmp_path, flat)))
    assert "choices column 'choices'" in msg and "list of choice texts" in msg


# -- models ----------------------------------------------------------------------------


def test_encoder_batches_are_batch_by_choices_by_tokens(tiny_models, mc_data: Path) -> None:
    task = make_task(config(tiny_models("bert"), mc_data))
    model, _ = task.load_model(parse_config(config(tiny_models("bert"), mc_data)).model)
    assert task.family == "encoder" and task.peft_task_type is None and "classifier" in task.head_modules  # (+ a pooler the MLM checkpoint lacks)
    batch = next(task.train_batches(8, 0))
    b, c, length = batch["input_ids"].shape
    assert (b, c) == (8, 4) and length % 8 == 0 and length <= 32
    assert batch["attention_mask"].shape == (8, 4, length) and batch["labels"].shape == (8,)
    assert task.batch_tokens(batch) == int(batch["attention_mask"].sum())
    out = model(**batch)
    assert out.logits.shape == (8, 4)
    # each choice row holds that choice's words
    tok = task.tokenizer
    first = task._encode("train")[0]["choices"]
    assert [tok.decode(ch["input_ids"]).split()[-1] for ch in first] == task.splits["train"]["choices"][0]


def test_long_inputs_keep_their_end(tiny_models, tmp_path: Path) -> None:
    root = data_dir(tmp_path, "race")
    long = make_rows(10, 3, "race")
    for r in long:
        r["article"] = "tomorrow " + "the day " * 40 + "sad"
    write_jsonl(root / "test.jsonl", long)
    for arch in ("bert", "gpt2", "t5"):
        raw = config(tiny_models(arch), root)
        task = make_task(raw)
        task.load_model(parse_config(raw).model)
        rows = task._encode("test")
        if arch == "bert":
            ids = rows[0]["choices"][0]["input_ids"]
        elif arch == "gpt2":
            ids = rows[0]["choices"][0]["input_ids"][: -len([x for x in rows[0]["choices"][0]["labels"] if x != -100])]
        else:
            ids = rows[0]["source"]
        text = task.tokenizer.decode(ids)
        assert len(ids) <= 32 and "tomorrow" not in text and "sad" in text and "it was ?" in text, (arch, text)


def test_length_normalized_scorer_against_hand_computed_values() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, 6, 0]])
    sums, counts = choice_logprobs(logits, labels, shift=True)
    lsm = torch.log_softmax(logits, -1)
    want0 = lsm[0, 1, 3] + lsm[0, 2, 4]  # position t predicts token t+1
    want1 = lsm[1, 0, 1] + lsm[1, 1, 2] + lsm[1, 2, 6] + lsm[1, 3, 0]
    assert counts.tolist() == [2, 4]
    assert torch.allclose(sums, torch.stack([want0, want1]), atol=1e-6)
    sums, counts = choice_logprobs(logits, labels, shift=False)  # seq2seq: aligned
    want0 = lsm[0, 2, 3] + lsm[0, 3, 4]
    assert counts.tolist() == [2, 4] and torch.allclose(sums[0], want0, atol=1e-6)


@pytest.mark.parametrize("arch", ["gpt2", "t5", "bart"])
def test_scores_match_each_choice_scored_alone(tiny_models, mc_data: Path, tmp_path: Path, arch: str) -> None:
    """Batched, padded scoring gives each choice's mean token log-probability, computed by hand."""
    path = tiny_models(arch)
    if arch == "bart":  # with BART's own framing: <s> text </s>
        path = str(shutil.copytree(path, tmp_path / "bart"))
        tok = AutoTokenizer.from_pretrained(path)
        tok.backend_tokenizer.post_processor = TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[("<s>", 2), ("</s>", 3)])
        tok.save_pretrained(path)
    raw = config(path, mc_data)
    task = make_task(raw)
    model, tok = task.load_model(parse_config(raw).model)
    model.eval()
    scores, losses = task.choice_scores(model, "test", 16, limit=3)
    assert len(scores) == 3 and all(len(s) == 4 for s in scores)
    for i in range(3):
        row = task._encode("test")[i]
        for j, seq in enumerate(row["choices"]):
            with torch.no_grad():
                if arch == "gpt2":
                    ids = torch.tensor([seq["input_ids"]])
                    lsm = torch.log_softmax(model(input_ids=ids).logits[0], -1)
                    scored = [(t - 1, y) for t, y in enumerate(seq["labels"]) if y != -100]
                else:
                    out = model(input_ids=torch.tensor([row["source"]]),
                                decoder_input_ids=torch.tensor([seq["decoder_input_ids"]]))
                    lsm = torch.log_softmax(out.logits[0], -1)
                    scored = [(t, y) for t, y in enumerate(seq["labels"]) if y != -100]
            want = sum(float(lsm[t, y]) for t, y in scored) / len(scored)
            assert scores[i][j] == pytest.approx(want, abs=1e-4)
        assert losses[i] == pytest.approx(-scores[i][row["answer"]], abs=1e-6)
    if arch == "gpt2":  # the prompt, then the choice as it follows "Answer:"
        seq = task._encode("test")[0]["choices"][0]
        assert tok.decode(seq["input_ids"]).endswith("answer : " + task.splits["test"]["choices"][0][0])
    if arch == "bart":  # <s> is read by the decoder, not scored; </s> is scored; the source is framed
        row = task._encode("test")[0]
        seq = row["choices"][0]
        assert row["source"][0] == 2 and row["source"][-1] == 3
        assert seq["decoder_input_ids"][:2] == [3, 2]  # decoder start (</s>), then <s>
        assert seq["labels"][0] == -100 and seq["labels"][-1] == 3 and len(seq["labels"]) == 3


@pytest.mark.parametrize("arch", ["bert", "gpt2", "t5"])
def test_train_and_evaluate_end_to_end(tiny_models, mc_data: Path, arch: str) -> None:
    task, model, out, res, moved, meter, eval_meter = train_and_evaluate(config(tiny_models(arch), mc_data))
    family = {"bert": "encoder", "gpt2": "decoder", "t5": "seq2seq"}[arch]
    assert task.family == family
    assert task.peft_task_type == {"encoder": None, "decoder": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM"}[family]
    assert any("lora_" in n for n in moved)
    if family == "encoder":
        assert any("classifier" in n for n in moved)  # the new head trains too
    check_result(task, res)
    assert out.steps == 2 and out.tokens > 0 and out.curve[-1].metrics["accuracy"] >= 0
    assert meter.forward_flops > 0 and meter.backward_flops > 0
    assert eval_meter.forward_flops > 0 and eval_meter.counted_shapes >= 1  # evaluation goes through the meter
    limited = task.evaluate(model, "test", 4, limit=3)
    assert limited.predictions == res.predictions[:3] and limited.examples == 3
    assert task.render(res.predictions[0]) in "ABCD"
    assert model.training  # evaluate restores the mode train() left


def test_decoder_training_batches_score_the_answer_only(tiny_models, mc_data: Path) -> None:
    raw = config(tiny_models("llama"), mc_data)
    task = make_task(raw)
    task.load_model(parse_config(raw).model)
    batch = next(task.train_batches(4, 0))
    assert set(batch) == {"input_ids", "attention_mask", "labels"} and batch["input_ids"].shape[0] == 4
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        answer = [int(t) for t, y in zip(ids, labels) if y != -100]
        assert len(answer) == 1 and task.tokenizer.decode(answer) in COLOURS.values()  # one word, the right colour
    assert task._specials[0] == [] or batch["input_ids"][0, 0] == task.tokenizer.bos_token_id


def test_seq2seq_training_batches(tiny_models, mc_data: Path) -> None:
    raw = config(tiny_models("bart"), mc_data)
    task = make_task(raw)
    task.load_model(parse_config(raw).model)
    batch = next(task.train_batches(4, 0))
    assert set(batch) == {"input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask", "labels"}
    assert task.batch_tokens(batch) == int(batch["attention_mask"].sum() + batch["decoder_attention_mask"].sum())


def test_vision_model_refused_in_one_line(tiny_models, mc_data: Path) -> None:
    raw = config(tiny_models("vit"), mc_data)
    task = make_task(raw)
    with pytest.raises(UserError) as err:
        task.load_model(parse_config(raw).model)
    msg = str(err.value)
    assert "multiple_choice" in msg and "vision" in msg and "\n" not in msg


def test_runner_end_to_end(tiny_models, mc_data: Path, tmp_path: Path) -> None:
    from peftbench.runner import run

    raw = config(tiny_models("bert"), mc_data)
    raw["task"]["samples"] = 3
    outcome = run(parse_config(raw), tmp_path / "results")
    result = outcome.row.result
    assert set(result["test"]) >= {"accuracy", "loss"} and result["task"]["kind"] == "multiple_choice"
    assert result["costs"]["train_flops"] > 0 and result["costs"]["eval_flops"] > 0
    assert len(result["samples"]) == 3 and result["samples"][0]["tuned"] in "ABCD"


# -- the CLI ---------------------------------------------------------------------------


def cli(*args: object):
    from peftbench.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_refused(result, results_dir: Path, *words: str) -> str:
    shown = f"exit {result.exit_code}\nstderr: {result.stderr!r}"
    assert result.exit_code == 2, shown
    assert "Traceback" not in result.output, shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    for w in words:
        assert w.lower() in lines[0].lower(), shown
    assert not results_dir.exists()
    return lines[0]


def yaml_config(tmp_path: Path, model: str, source: Path) -> Path:
    path = tmp_path / "mc.yaml"
    path.write_text(json.dumps({"task": {"kind": "multiple_choice", "data": {"source": str(source)}}}))
    return path


def test_cli_refuses_uneven_choices(tiny_models, tmp_path: Path) -> None:
    def drop(rows):
        rows[1]["choices"] = {"label": list("ABC"), "text": rows[1]["choices"]["text"][:3]}
        rows[1]["answerKey"] = "A"
    source = bad_rows(tmp_path / "d", drop)
    res = tmp_path / "results"
    r = cli("run", "--config", yaml_config(tmp_path, tiny_models("bert"), source), "--model", tiny_models("bert"),
            "--steps", 1, "--max-length", 32, "--results-dir", res)
    assert_refused(r, res, "same number of choices", "test row 2")


def test_cli_refuses_an_unknown_answer(tiny_models, tmp_path: Path) -> None:
    source = bad_rows(tmp_path / "d", lambda rows: rows[0].update(answerKey="Z"))
    res = tmp_path / "results"
    r = cli("run", "--config", yaml_config(tmp_path, tiny_models("gpt2"), source), "--model", tiny_models("gpt2"),
            "--steps", 1, "--max-length", 32, "--results-dir", res)
    assert_refused(r, res, "'Z'", "matches no choice")


def test_cli_refuses_a_vision_model(tiny_models, mc_data: Path, tmp_path: Path) -> None:
    res = tmp_path / "results"
    r = cli("run", "--config", yaml_config(tmp_path, tiny_models("vit"), mc_data), "--model", tiny_models("vit"),
            "--steps", 1, "--results-dir", res)
    assert_refused(r, res, "multiple_choice", "vision")


def test_cli_task_and_column_flags_refuse_a_missing_column(tiny_models, mc_data: Path, tmp_path: Path) -> None:
    res = tmp_path / "results"
    r = cli("run", "--task", "multiple_choice", "--data", mc_data, "--column", "answer=gold", "--model",
            tiny_models("bert"), "--steps", 1, "--results-dir", res)
    assert_refused(r, res, "answer column 'gold' is missing", "--column answer=NAME")


def test_few_shot_scores_choices_after_demonstrations(tiny_models, mc_data: Path, tmp_path: Path) -> None:
    from peftbench.runner import run

    raw = config(tiny_models("gpt2"), mc_data)
    raw["method"] = {"name": "few_shot", "params": {"k": 2}}
    raw["task"]["max_length"] = 160
    out = run(parse_config(raw), tmp_path)
    demo = out.row.result["task"]["demonstrations"]
    assert out.row.status == "done" and demo["k"] == 2 and demo["context_tokens"] > 10
    assert 0.0 <= out.row.result["test"]["accuracy"] <= 1.0

    cfg = parse_config(raw)
    task = get_task("multiple_choice")(cfg.task)
    task.load_data()
    task.load_model(cfg.model)
    plain = task.prompt("test", 0)
    task.demonstrate(2, seed=0)
    assert task.prompt("test", 0).endswith(plain) and task.prompt("test", 0).count("Question:") == 3
