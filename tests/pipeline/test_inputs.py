import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ibprune
from ibprune.errors import InputError, UnsupportedModelError
from ibprune.pipeline.inputs import check_inputs, first_batch

X = torch.randn(1, 1, 8, 8)


def _loader(x, y):
    return DataLoader(TensorDataset(x, y), batch_size=4)


def test_a_good_setup_reports_its_classes(digits_net, random_loader):
    assert check_inputs(digits_net, random_loader(), X) == 10


def test_empty_loader():
    with pytest.raises(InputError, match="yields no batches"):
        first_batch(_loader(torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)))


def test_batches_must_be_pairs():
    with pytest.raises(InputError, match="\\(inputs, targets\\)"):
        first_batch([torch.zeros(2, 1, 8, 8)])


def test_targets_out_of_range(digits_net):
    with pytest.raises(InputError, match="targets range over \\[0, 12\\] but the model has 10 outputs"):
        check_inputs(digits_net, _loader(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 12])), X)


def test_float_targets(digits_net):
    with pytest.raises(InputError, match="class indices"):
        check_inputs(digits_net, _loader(torch.randn(4, 1, 8, 8), torch.rand(4)), X)


def test_example_input_of_the_wrong_shape(digits_net, random_loader):
    with pytest.raises(InputError, match="fails on example_input of shape \\(1, 3, 8, 8\\)"):
        check_inputs(digits_net, random_loader(), torch.randn(1, 3, 8, 8))
    with pytest.raises(InputError, match="training inputs have shape"):
        check_inputs(digits_net, random_loader(shape=(1, 16, 16)), X)


def test_outputs_that_are_not_logits(random_loader):
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            out = self.fc(x.flatten(1))
            return out, out

    with pytest.raises(InputError, match="returns tuple, not a tensor of logits"):
        check_inputs(Pair(), random_loader(), X)


def test_an_unprunable_model_fails_before_training(random_loader):
    from tests.core.test_prune import PadShortcut

    steps = []

    class Counting(DataLoader):
        def __iter__(self):
            steps.append(1)
            return super().__iter__()

    loader = random_loader(classes=4)
    counted = Counting(loader.dataset, batch_size=8)
    with pytest.raises(UnsupportedModelError, match="group\\(s\\) rooted at stem"):
        ibprune.compress(PadShortcut(), counted, macs=0.5, gate_epochs=5, finetune_epochs=5, verbose=False)
    assert len(steps) <= 2  # the input checks read one batch; no training pass started


def test_a_transformers_model_and_dict_batches_are_taken_as_they_come():
    transformers = pytest.importorskip("transformers", reason="the [text] extra (transformers) is not installed")
    from ibprune.data.text import pack
    from tests.rewrites.test_encoder import padded, tiny

    hf, x = tiny().hf, torch.cat([padded()] * 4)
    y = torch.arange(len(x)) % 3
    dicts = [{"input_ids": x[i:i + 4, 0], "attention_mask": x[i:i + 4, 1], "labels": y[i:i + 4]}
             for i in range(0, len(x), 4)]  # what a transformers data collator yields
    result = ibprune.compress(hf, dicts, dicts, macs=0.5, gate_epochs=0.5, finetune_epochs=0.5, round_to=1,
                              latency_runs=2, bench_batch=4, verbose=False)
    assert isinstance(hf, transformers.PreTrainedModel) and result.report["finetune"]["optimizer"] == "adamw"
    slim = result.model.hf  # the slim transformers model, called as before
    assert slim(input_ids=x[:, 0], attention_mask=x[:, 1]).logits.shape == (len(x), 3)
    assert result.report["achieved"]["macs"] <= 0.5 and torch.equal(pack(x[:, 0], x[:, 1]), x)
