import torch

from ibprune.outputs.robustness import adversarial_accuracy


def test_attacks_never_help_and_vanish_at_zero_size(digits_net, random_loader):
    loader = random_loader(n=32, batch=8)
    cpu = torch.device("cpu")
    r = adversarial_accuracy({"net": digits_net}, loader, cpu, eps=0.5, pgd_steps=3, max_examples=16)
    acc = r["models"]["net"]
    assert r["examples"] == 16 and acc["fgsm"] <= acc["clean"] and acc["pgd3"] <= acc["clean"]
    zero = adversarial_accuracy({"net": digits_net}, loader, cpu, eps=0.0, pgd_steps=3)["models"]["net"]
    assert zero["fgsm"] == zero["pgd3"] == zero["clean"]


def test_a_strong_attack_breaks_a_trained_model():
    from ibprune.data.loaders import digits_loaders
    from ibprune.demo import pretrained_digits_net

    _, test = digits_loaders()
    r = adversarial_accuracy({"net": pretrained_digits_net(epochs=5)}, test, torch.device("cpu"), eps=0.5,
                             max_examples=256)["models"]["net"]
    assert r["clean"] > 0.8 and r["pgd10"] < r["fgsm"] < r["clean"]
