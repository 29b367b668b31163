import pytest
import torch

import ibprune
from ibprune.errors import CheckpointError
from ibprune.models import DigitsNet


def test_compressed_models_reload_without_pickled_code(digits_net, random_loader, tmp_path):
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
