import pytest
import torch
import torchvision
from torchvision.models.shufflenetv2 import InvertedResidual, channel_shuffle

from ibprune.core.groups import find_groups
from ibprune.rewrites import rewrite
from ibprune.rewrites.shuffle import ChannelShuffle, ShuffleBlock


def test_channel_shuffle_module_is_torchvisions_permutation():
    x = torch.randn(2, 12, 3, 3)
    for groups in (2, 3, 4):
        assert torch.equal(ChannelShuffle(12, groups)(x), channel_shuffle(x, groups))


@pytest.mark.parametrize("stride", [1, 2])
def test_shuffle_block_is_the_same_block(stride):
    block = InvertedResidual(16, 16, stride).eval()
    new = ShuffleBlock(block).eval()
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(new(x), block(x))
    assert new.state_dict().keys() == block.state_dict().keys()  # a checkpoint of the original still loads


def test_shufflenet_prunes_inside_branches_and_not_across_shuffles():
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    ref = model(x)
    assert len(rewrite(model)) == 16 and torch.equal(model(x), ref)
    with pytest.warns(UserWarning, match="reach a channel shuffle"):
        _, groups = find_groups(model, x)
    produced = {layer for g in groups for layer in g.outputs}
    assert "stage2.1.branch2.0" in produced  # a branch's hidden width
    assert not any(layer.endswith("branch2.5") for layer in produced)  # branch outputs, interleaved by the shuffle
