import torch

from ibprune.core.probes import random_like
from ibprune.data.text import pack
from ibprune.models.text import TextClassifier


class Echo(torch.nn.Module):
    """Stands in for a transformers classifier: an output object whose logits show what it was given."""

    def forward(self, input_ids, attention_mask):
        return type("Output", (), {"logits": torch.stack([input_ids.sum(1), attention_mask.sum(1)], 1)})()


def test_one_packed_tensor_reaches_the_model_as_ids_and_mask():
    ids, mask = torch.tensor([[5, 6, 7], [8, 9, 0]]), torch.tensor([[1, 1, 1], [1, 1, 0]])
    x = pack(ids, mask)
    assert x.shape == (2, 2, 3) and x.dtype == torch.int64
    assert TextClassifier(Echo())(x).tolist() == [[18, 3], [17, 2]]


def test_random_inputs_for_a_text_model_keep_each_channel_to_its_own_values():
    x = pack(torch.tensor([[5, 6, 7, 0]]), torch.tensor([[1, 1, 1, 0]]))
    drawn = random_like(x, 64, torch.Generator().manual_seed(0))
    assert drawn.shape == (64, 2, 4) and drawn.dtype == torch.int64
    assert set(drawn[:, 0].unique().tolist()) == {0, 5, 6, 7} and set(drawn[:, 1].unique().tolist()) == {0, 1}
    assert random_like(torch.zeros(1, 3), 5).dtype == torch.float32
