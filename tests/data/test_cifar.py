"""CIFAR ResNets and the CIFAR-10 data path. Tests that need ../shared skip when it is absent."""

from pathlib import Path

import pytest
import torch

from ibprune.core.gates import GateSet
from ibprune.core.groups import find_groups
from ibprune.core.train import evaluate
from ibprune.data.cifar import TensorLoader, cifar10_loaders, detect, load_cifar10
from ibprune.models.cifar_resnet import CifarResNet, ConvShortcut, cifar_resnet20, cifar_resnet56
from ibprune.weights import load_weights

SHARED = Path(__file__).resolve().parents[3] / "shared"  # ../shared beside the repository
MODELS = SHARED / "models" / "cifar10-resnet"
DATA = SHARED / "data" / "cifar10-jpeg"
needs_models = pytest.mark.skipif(not MODELS.is_dir(), reason=f"pretrained checkpoints not found at {MODELS}")
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"CIFAR-10 JPEG tarballs not found at {DATA}")
DEEPER = pytest.mark.slow  # ResNet-56 repeats ResNet-20's checks at 3x the depth and cost: `pytest -m slow`


def test_conv_shortcut_is_option_a_exactly():
    conv, pad = CifarResNet(20, shortcut="conv").eval(), CifarResNet(20, shortcut="pad").eval()
    pad.load_state_dict(conv.state_dict(), strict=False)
    x = torch.randn(4, 3, 32, 32)
    assert (conv(x) - pad(x)).abs().max() <= 1e-5


def test_pad_shortcut_hides_the_coupling_and_conv_reveals_it():
    x = torch.randn(1, 3, 32, 32)
    _, groups = find_groups(CifarResNet(20, shortcut="conv").eval(), x)
    stream = next(g for g in groups if g.name == "conv1" or "conv1" in g.outputs)
    assert "layer2.0.shortcut" in stream.inputs  # the stage-1 stream feeds the stage-2 shortcut conv
    assert any(isinstance(m, ConvShortcut) for m in CifarResNet(20).modules())


def test_bad_depth():
    with pytest.raises(ValueError, match="6n \\+ 2"):
        CifarResNet(21)


@needs_models
@pytest.mark.parametrize(("factory", "name"), [(cifar_resnet20, "resnet20-12fca82f.th"),
                                               pytest.param(cifar_resnet56, "resnet56-4bfd9763.th", marks=DEEPER)])
def test_checkpoints_load_into_both_forms_with_equal_logits(factory, name):
    conv = load_weights(factory(), MODELS / name).eval()
    pad = load_weights(factory(shortcut="pad"), MODELS / name).eval()
    x = torch.randn(8, 3, 32, 32)
    assert (conv(x) - pad(x)).abs().max() <= 1e-5
    gates = GateSet(find_groups(conv, x[:1])[1]).attach(conv).eval()
    assert (conv(x) - pad(x)).abs().max() <= 1e-5  # gates at mu = 1 change nothing
    gates.detach()


@needs_models
@needs_data
@pytest.mark.parametrize(("factory", "name", "accuracy"), [
    (cifar_resnet20, "resnet20-12fca82f.th", 0.810),
    pytest.param(cifar_resnet56, "resnet56-4bfd9763.th", 0.832, marks=DEEPER)])
def test_pretrained_accuracy_on_the_jpeg_test_set(factory, name, accuracy):
    """The figures in ../shared/README.md: JPEG costs ~10 points against the lossless 91.8 / 93.6 %."""
    _, _, test = cifar10_loaders(DATA)
    model = load_weights(factory(), MODELS / name)
    assert evaluate(model, test, torch.device("cpu")) == pytest.approx(accuracy, abs=0.002)


@needs_data
def test_tarballs_decode_to_the_standard_split():
    assert detect(DATA) == "tarballs"
    d = load_cifar10(DATA)
    assert d["train_x"].shape == (50000, 3, 32, 32) and d["test_x"].shape == (10000, 3, 32, 32)
    assert d["train_x"].dtype == torch.uint8
    assert torch.bincount(d["test_y"]).tolist() == [1000] * 10
    train, val, test = cifar10_loaders(DATA, val_size=5000)
    assert len(train.labels) == 45000 and len(val.labels) == 5000 and len(test.labels) == 10000


def test_image_folder_layout(tmp_path, image_tree, monkeypatch):
    monkeypatch.setenv("IBPRUNE_CACHE", str(tmp_path / "cache"))
    image_tree(tmp_path / "c10", splits=("train", "test"), classes=("a", "b"), per_class=2, size=32)
    tmp_path = tmp_path / "c10"
    assert detect(tmp_path) == "imagefolder"
    d = load_cifar10(tmp_path)
    assert d["train_x"].shape == (4, 3, 32, 32) and d["test_y"].tolist() == [0, 0, 1, 1]


def test_not_cifar(tmp_path):
    with pytest.raises(FileNotFoundError, match="no CIFAR-10 here"):
        detect(tmp_path)


def test_tensor_loader_augments_on_tensors():
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    labels = torch.arange(10)
    train = TensorLoader(images, labels, batch_size=4, train=True, seed=3)
    assert len(train) == 3
    seen = torch.cat([y for _, y in train])
    assert sorted(seen.tolist()) == list(range(10))
    x, _ = next(iter(train))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    plain = TensorLoader(images, labels, batch_size=10)
    xs, ys = next(iter(plain))
    assert torch.equal(ys, labels)
    # eval batches are only normalised: undoing it gives the images back
    back = (xs * plain.std + plain.mean) * 255
    assert (back - images.float()).abs().max() < 1e-3
    # a crop of a padded image keeps 32x32 and a flip is an exact mirror
    aug = TensorLoader(images, labels, batch_size=10, train=True, pad=0, seed=0)
    xa, ya = next(iter(aug))
    for a, y in zip(xa, ya):
        assert torch.allclose(a, xs[y]) or torch.allclose(a, xs[y].flip(2))
