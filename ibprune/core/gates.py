"""Information-bottleneck gates: ``h_c <- h_c * z_c`` with ``z_c = mu_c + sigma_c * eps``.

Where the gates sit
-------------------
A group's gate multiplies the group's channels **where they are read**: at the input of every conv / linear
layer that consumes them (a forward pre-hook), i.e. after the producing layer's BN and activation. Three
reasons:

* Removal is exact. A conv or linear layer whose input channel ``c`` is multiplied by 0 computes exactly what
  the same layer computes with input channel ``c`` deleted, so "gate shut" and "channel pruned" are the same
  function. A gate placed after a BN but before another BN, a bias or a residual add would not be.
* One rule covers residual streams, concatenations and depthwise chains: every reader of the stream sees the
  same gate, and channel-wise layers (BN, depthwise conv) need none because they never mix channels.
* The gate means fold into the readers' weights (``fold``), so nothing of the gates remains after pruning.

During training ``eps ~ N(0, 1)`` is drawn once per example and forward pass, shared by all readers of a
channel (the channel is one noisy message); in eval mode ``z = mu``. ``kl()`` is the variational upper bound
``0.5 * log(1 + mu^2 / sigma^2)`` on the information a channel passes (VIBNet, Dai et al., 2018).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ibprune.core.groups import ChannelGroup


class IBGate(nn.Module):
    """A vector of ``size`` multiplicative Gaussian gates with learned mean ``mu`` and ``log sigma^2``."""

    def __init__(self, size: int, mu: float = 1.0, log_sigma2: float = -6.0) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.full((size,), float(mu)))
        self.log_sigma2 = nn.Parameter(torch.full((size,), float(log_sigma2)))

    def sample(self, batch: int) -> torch.Tensor:
        """Gate values of shape ``(batch, size)`` (training: noisy; eval: ``mu``, shape ``(1, size)``)."""
        if not self.training:
            return self.mu.unsqueeze(0)
        eps = torch.randn(batch, self.mu.numel(), device=self.mu.device, dtype=self.mu.dtype)
        return self.mu + torch.exp(0.5 * self.log_sigma2) * eps

    def alpha(self) -> torch.Tensor:
        """Signal-to-noise ratio ``mu^2 / sigma^2`` per channel."""
        return self.mu.pow(2) * torch.exp(-self.log_sigma2)

    def kl(self) -> torch.Tensor:
        """Per-channel information bound ``0.5 * log(1 + mu^2 / sigma^2)`` in nats (differentiable)."""
        return 0.5 * torch.log1p(self.alpha())

    def information(self) -> torch.Tensor:
        """``kl()`` detached: nats each channel passes."""
        return self.kl().detach()


class GateSet(nn.Module):
    """One ``IBGate`` per channel group, attached to a model by hooks and removable without a trace."""

    def __init__(self, groups: list[ChannelGroup], mu: float = 1.0, log_sigma2: float = -6.0) -> None:
        super().__init__()
        self.groups = groups
        self.gates = nn.ModuleDict({_key(g.name): IBGate(g.size, mu, log_sigma2) for g in groups})
        self._shut: dict[str, torch.Tensor] = {}
        self._z: dict[str, torch.Tensor] = {}
        self._handles: list = []
        # layer name -> [(gate key, the layer's input channels, positions in that gate vector)]
        self._sites: dict[str, list[tuple[str, torch.Tensor, torch.Tensor]]] = {}
        for g in groups:
            for layer, cmap in g.gate_sites.items():
                self._sites.setdefault(layer, []).append(
                    (_key(g.name), torch.tensor(cmap.channels), torch.tensor(cmap.gates)))

    def __getitem__(self, group_name: str) -> IBGate:
        return self.gates[_key(group_name)]

    # --- attaching -------------------------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> GateSet:
        """Hook the gates into ``model`` (its modules and weights are not changed)."""
        if self._handles:
            raise RuntimeError("gates are already attached; detach() first")
        modules = dict(model.named_modules())
        # closures, not bound methods: a deepcopy of the gated model (e.g. by a MACs counter) then shares this
        # GateSet instead of half-copying it
        self._handles.append(model.register_forward_pre_hook(lambda m, a, k: self._draw(m, a, k), with_kwargs=True))
        device = self.gates[next(iter(self.gates))].mu.device  # index tensors live beside the gates
        for layer, entries in self._sites.items():
            dim = 1 if isinstance(modules[layer], nn.modules.conv._ConvNd) else -1
            entries = [(key, ch.to(device), pos.to(device)) for key, ch, pos in entries]
            self._handles.append(modules[layer].register_forward_pre_hook(self._gate_hook(entries, dim)))
        return self

    def detach(self) -> None:
        """Remove every hook: the model computes exactly what it computed before ``attach``."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._z.clear()

    def _draw(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        first = args[0] if args else next(iter(kwargs.values()))
        batch = first.shape[0] if isinstance(first, torch.Tensor) and first.dim() > 0 else 1
        self._z = {}
        for key, gate in self.gates.items():
            z = gate.sample(batch)
            if key in self._shut:
                z = z * self._shut[key].to(z.device)
            self._z[key] = z

    def _gate_hook(self, entries: list[tuple[str, torch.Tensor, torch.Tensor]], dim: int):
        def hook(module: nn.Module, args: tuple):
            x = args[0]
            channels = x.shape[dim]
            rows = max(self._z[key].shape[0] for key, _, _ in entries)
            rows = rows if rows == x.shape[0] else 1
            m = torch.ones(rows, channels, device=x.device, dtype=self._z[entries[0][0]].dtype)
            for key, ch, pos in entries:
                m[:, ch] = self._z[key][:rows, pos].expand(rows, -1)
            shape = [rows, channels] + [1] * (x.dim() - 2) if dim == 1 else [rows] + [1] * (x.dim() - 2) + [channels]
            return (x * m.view(shape).to(x.dtype), *args[1:])
        return hook

    # --- reading and steering --------------------------------------------------------------------------------
    def information(self) -> dict[str, torch.Tensor]:
        """Nats per channel of every group, on the CPU."""
        return {g.name: self[g.name].information().cpu() for g in self.groups}

    def weighted_kl(self, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """``sum_c w_c KL_c / sum_c w_c`` over all channels (a weighted mean, so beta is size-free)."""
        total = sum((self[n].kl() * w.to(self[n].mu.device)).sum() for n, w in weights.items())
        return total / sum(float(w.sum()) for w in weights.values())

    @contextmanager
    def shut(self, removed: dict[str, list[int]]) -> Iterator[None]:
        """Within the block, the listed channels of each group pass nothing (``z = 0``)."""
        for name, idxs in removed.items():
            keep = torch.ones(self[name].mu.numel())
            keep[list(idxs)] = 0.0
            self._shut[_key(name)] = keep
        try:
            yield
        finally:
            self._shut.clear()

    @torch.no_grad()
    def fold(self, model: nn.Module) -> None:
        """Multiply the gated layers' input weights of ``model`` (gates detached) by the gate means.

        ``model`` then computes, without hooks, what the gated model computes in eval mode. It may be a copy of
        the model the gates were attached to: layers are found by name.
        """
        modules = dict(model.named_modules())
        for layer, entries in self._sites.items():
            module = modules[layer]
            for key, ch, pos in entries:
                mu = self.gates[key].mu.detach().to(module.weight.device, module.weight.dtype)[pos]
                _scale_inputs(module, ch.tolist(), mu)


def _scale_inputs(module: nn.Module, channels: list[int], scale: torch.Tensor) -> None:
    """Scale the weights that read input ``channels`` of a conv (any ``groups``) or linear layer."""
    w = module.weight
    if isinstance(module, nn.Linear) or getattr(module, "groups", 1) == 1:
        shape = [1, -1] + [1] * (w.dim() - 2)
        w[:, channels] *= scale.view(shape)
        return
    in_per, out_per = w.shape[1], w.shape[0] // module.groups
    for c, s in zip(channels, scale):
        g = c // in_per
        w[g * out_per:(g + 1) * out_per, c % in_per] *= s


def _key(name: str) -> str:
    """ModuleDict keys may not contain dots."""
    return name.replace(".", "__") or "__root__"
