import pytest
import torch

from ibprune.errors import CheckpointError
from ibprune.models import DigitsNet
from ibprune.weights import load_weights, read_state_dict


def test_round_trip_with_wrappers_and_prefix(tmp_path, digits_net):
    state = {f"module.{k}": v for k, v in digits_net.state_dict().items()}
    torch.save({"state_dict": state, "best_prec1": 91.0}, tmp_path / "ckpt.th")
    fresh = load_weights(DigitsNet(width=16), tmp_path / "ckpt.th")
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(fresh.eval()(x), digits_net(x))


def test_mismatched_keys_are_listed(tmp_path):
    torch.save(DigitsNet(width=8).state_dict(), tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_weights(DigitsNet(width=16), tmp_path / "w.pt")
    torch.save({"other.weight": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="missing keys .*unexpected keys \\(1\\): other.weight"):
        load_weights(DigitsNet(width=16), tmp_path / "x.pt")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a loadable PyTorch checkpoint"):
        read_state_dict(tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "missing.pt")


def test_pickled_code_is_refused_unless_trusted(tmp_path):
    net = DigitsNet(width=8)
    torch.save(net, tmp_path / "module.pt")  # a whole module needs unpickling code
    with pytest.raises(CheckpointError, match="pickled code.*trust_checkpoint=True$"):
        read_state_dict(tmp_path / "module.pt")
    state = read_state_dict(tmp_path / "module.pt", trust=True)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
