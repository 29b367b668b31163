import pytest
import torch

from ibprune.checkpoint import CheckpointError, load_weights, read_state_dict
from ibprune.models import DigitsNet


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


def test_compressed_models_reload_without_pickled_code(digits_net, random_loader, tmp_path):
    import ibprune

    loader = random_loader()
    result = ibprune.compress(digits_net, loader, macs=0.5, out_dir=tmp_path, gate_epochs=1.0, finetune_epochs=0.5,
                              round_to=1, latency_runs=3, bench_batch=4, verbose=False)
    torch.load(tmp_path / "compressed.pt", weights_only=True)  # plain data
    rebuilt = ibprune.load_compressed(DigitsNet(width=16), tmp_path / "compressed.pt")
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(rebuilt.eval()(x), result.model.eval()(x), atol=1e-6)
    with pytest.raises(CheckpointError, match="does not fit"):
        ibprune.load_compressed(DigitsNet(width=8), tmp_path / "compressed.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an ibprune compressed model"):
        ibprune.load_compressed(DigitsNet(width=16), tmp_path / "other.pt")
