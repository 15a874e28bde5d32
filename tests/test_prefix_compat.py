"""Prefix tuning on sequence classification whatever transformers calls its cache argument.

transformers 5.24 renamed `past_key_values` to `cache`; peft reads the old name from the forward's
signature and refused every classifier. These tests hold on either side of the rename.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from peftbench.errors import UserError
from peftbench.methods import get_method
from peftbench.methods.base import Context
from peftbench.methods.prefix_compat import accept_prefixes


def _classifier(path: str) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
    model.config.pad_token_id = 0
    return model


@pytest.mark.parametrize("arch", ["bert", "gpt2", "llama"])
def test_prefixes_attach_change_outputs_and_respect_padding(arch: str, tiny_models) -> None:
    path = tiny_models(arch)
    model = _classifier(path)
    ids = torch.randint(4, 50, (2, 7))
    mask = torch.ones_like(ids)
    ids[1, 5:], mask[1, 5:] = 0, 0
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    tuned = get_method("prefix")({"num_virtual_tokens": 4}).apply(model, Context("SEQ_CLS", path, 4, "encoder" if arch == "bert" else "decoder", ["classifier" if arch == "bert" else "score"]))
    for p in tuned.parameters():
        if p.requires_grad and p.dim() > 1:
            nn.init.normal_(p, std=1.0)  # a prefix far from anything the model saw
    tuned.eval()
    with torch.no_grad():
        both = tuned(input_ids=ids, attention_mask=mask).logits
        alone = tuned(input_ids=ids[1:, :5], attention_mask=mask[1:, :5]).logits
    assert float((both - before).abs().max()) > 1e-3  # the prefixes are attended to
    assert torch.allclose(both[1], alone[0], atol=1e-5)  # padding is still masked
    tuned.train()
    tuned(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1])).loss.backward()
    prompt = [p for n, p in tuned.named_parameters() if "prompt_encoder" in n]
    assert prompt and all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in prompt)


def test_the_alias_keeps_a_cache_the_caller_passes(tiny_models) -> None:
    model = _classifier(tiny_models("gpt2"))
    assert accept_prefixes(model)
    ids = torch.randint(4, 50, (1, 5))
    model.eval()
    with torch.no_grad():  # no past_key_values given: the model runs as before
        assert model(input_ids=ids).logits.shape == (1, 3)


class NoCache(nn.Module):
    base_model_prefix = "body"

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(2, 2)
        self.config = type("Cfg", (), {"model_type": "toy"})()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(input_ids.float())


def test_a_model_that_takes_no_prefixes_is_refused_in_one_line_naming_what_works() -> None:
    assert not accept_prefixes(NoCache())
    with pytest.raises(UserError) as err:
        get_method("prefix")({}).apply(NoCache(), Context("SEQ_CLS", "toy", 4, "encoder", []))
    line = str(err.value)
    assert "\n" not in line and "toy" in line and "prompt or p_tuning" in line and "decoder or seq2seq" in line
