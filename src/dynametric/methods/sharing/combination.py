"""Sharing Matters (Milbich et al., TPAMI 2020) / MIC (Roth et al., ICCV 2019): combining the class loss, the shared
loss and the decorrelation term (Milbich et al., TPAMI 2020), and evaluating the class head, the shared head and their
concatenation.

* ``summed`` (DiVA): ``L = L_class + alpha_shared * L_share + rho * L_adv`` on one batch, one step. Through the
  engine this is three loss terms (:func:`summed_objectives`; ``configs/sharing/*.yaml``).
* ``alternating`` (MIC): per iteration a class step on a class-balanced batch, then with probability ``p_aux`` a
  shared step on its own batch (t* triplets on true labels, or surrogate labels from
  :mod:`dynametric.methods.mic`), each its own forward/backward/update; ``rho * L_adv`` rides on the shared step by
  default (``adv_step``). :class:`SharingTrainer` implements both combinations as plain PyTorch steps (the engine's
  ``dynametric train`` runs ``summed`` only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dynametric.engine.objective import Objective
from dynametric.errors import ConfigError, InputError

COMBINATIONS = ("summed", "alternating")
AUX_SOURCES = ("t_star", "clustering", "random_groups")
# the alternating step(s) carrying rho * L_adv; "both": class and shared steps (as MIC's code does)
ADV_STEPS = ("shared", "class", "both")


@dataclass
class SharingSettings:
    """The choices the Sharing Matters paper and its code leave open, as options (defaults: the authors' code)."""

    combination: str = "summed"
    alpha_shared: float = 0.3
    rho: float = 1500.0
    p_aux: float = 0.8
    decorrelation: bool = True
    adv_step: str = "shared"
    class_head: str = "class"
    shared_head: str = "shared"

    def __post_init__(self) -> None:
        if self.combination not in COMBINATIONS:
            raise ConfigError(f"unknown combination {self.combination!r}; expected one of {list(COMBINATIONS)}",
                              key="combination")
        if self.adv_step not in ADV_STEPS:
            raise ConfigError(f"adv_step must be 'shared', 'class' or 'both', got {self.adv_step!r}", key="adv_step")
        if not 0.0 <= self.p_aux <= 1.0:
            raise ConfigError(f"p_aux must be in [0, 1], got {self.p_aux}", key="p_aux")
        if self.alpha_shared < 0 or self.rho < 0:
            raise ConfigError("alpha_shared and rho must be >= 0", key="alpha_shared")


@dataclass
class SharingParts:
    """The modules of a two-head run: class loss/miner, shared loss/miner, decorrelation (``None``: off)."""

    class_loss: nn.Module
    shared_loss: nn.Module
    class_miner: nn.Module | None = None
    shared_miner: nn.Module | None = None
    decorrelation: nn.Module | None = None

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.class_loss, self.shared_loss, self.class_miner, self.shared_miner,
                            self.decorrelation) if m is not None]


def summed_objectives(parts: SharingParts, settings: SharingSettings) -> list[Objective]:
    """The ``summed`` combination as engine loss terms. ``parts.decorrelation`` must then be a
    :class:`~dynametric.losses.decorrelation.DecorrelationLoss` (it reads the ``concat`` head)."""
    out = [Objective(parts.class_loss, parts.class_miner, settings.class_head, 1.0, "class"),
           Objective(parts.shared_loss, parts.shared_miner, settings.shared_head, settings.alpha_shared, "shared")]
    if parts.decorrelation is not None and settings.decorrelation:
        out.append(Objective(parts.decorrelation, None, "concat", settings.rho, "adv"))
    return out


def sharing_param_groups(embedder: nn.Module, parts: SharingParts, lr: float, weight_decay: float,
                         loss_lr: float = 5e-4, decorrelation_weight_decay: float = 1e-6) -> list[dict[str, Any]]:
    """Optimizer groups: embedder (``lr``, ``weight_decay``), loss parameters such as margin-loss ``beta``
    (``loss_lr``, no weight decay), the decorrelation regressor R (``lr``, ``decorrelation_weight_decay``)."""
    loss_params = [p for m in (parts.class_loss, parts.shared_loss) for p in m.parameters() if p.requires_grad]
    groups = [{"name": "embedder", "params": [p for p in embedder.parameters() if p.requires_grad], "lr": lr,
               "weight_decay": weight_decay}]
    if loss_params:
        groups.append({"name": "loss", "params": loss_params, "lr": loss_lr, "weight_decay": 0.0})
    if parts.decorrelation is not None:
        groups.append({"name": "decorrelation", "params": list(parts.decorrelation.parameters()), "lr": lr,
                       "weight_decay": decorrelation_weight_decay})
    return groups


def _heads(outputs: Any, settings: SharingSettings) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(outputs, Mapping) or settings.class_head not in outputs or settings.shared_head not in outputs:
        got = list(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
        raise InputError(f"expected a two-head output with {settings.class_head!r} and {settings.shared_head!r}, "
                         f"got {got}", key="model.num_heads")
    return outputs[settings.class_head], outputs[settings.shared_head]


def _term(loss: nn.Module, miner: nn.Module | None, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if miner is None:
        return loss(emb, labels)
    return loss(emb, labels, miner(emb, labels))


def _adv(parts: SharingParts, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    dec = parts.decorrelation
    assert dec is not None
    if hasattr(dec, "decorrelation"):  # DecorrelationLoss wraps a Decorrelation
        dec = dec.decorrelation
    return dec(c, s)


class SharingTrainer:
    """Plain-PyTorch steps of the two combinations (used by ``benchmarks/sharing_synthetic.py`` and the tests).

    ``shared_labels`` of a step are the true labels for t* miners and the surrogate labels for the clustering route.
    Every step returns ``{term: float}``."""

    def __init__(self, embedder: nn.Module, parts: SharingParts, settings: SharingSettings,
                 optimizer: torch.optim.Optimizer, generator: torch.Generator | None = None) -> None:
        self.embedder = embedder
        self.parts = parts
        self.settings = settings
        self.optimizer = optimizer
        self.generator = generator
        self.use_adv = settings.decorrelation and parts.decorrelation is not None and settings.rho > 0
        self.shared_steps = 0
        self.class_steps = 0

    def _update(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def summed_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """``L_class + alpha * L_share + rho * L_adv`` on one batch (t* on the true labels)."""
        c, s = _heads(self.embedder(images), self.settings)
        l_class = _term(self.parts.class_loss, self.parts.class_miner, c, labels)
        l_share = _term(self.parts.shared_loss, self.parts.shared_miner, s, labels)
        total = l_class + self.settings.alpha_shared * l_share
        out = {"class": float(l_class.detach()), "shared": float(l_share.detach())}
        if self.use_adv:
            l_adv = _adv(self.parts, c, s)
            total = total + self.settings.rho * l_adv
            out["adv"] = float(l_adv.detach())
        self._update(total)
        self.class_steps += 1
        self.shared_steps += 1
        return out

    def class_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        return self._head_step("class", images, labels)

    def shared_step(self, images: torch.Tensor, shared_labels: torch.Tensor) -> dict[str, float]:
        return self._head_step("shared", images, shared_labels)

    def _head_step(self, head: str, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One update of the ``class`` or ``shared`` head's loss (plus ``rho * L_adv`` on the steps it is set for)."""
        c, s = _heads(self.embedder(images), self.settings)
        if head == "class":
            loss = _term(self.parts.class_loss, self.parts.class_miner, c, labels)
        else:
            loss = _term(self.parts.shared_loss, self.parts.shared_miner, s, labels)
        out = {head: float(loss.detach())}
        if self.use_adv and self.settings.adv_step in (head, "both"):
            l_adv = _adv(self.parts, c, s)
            loss = loss + self.settings.rho * l_adv
            out["adv"] = float(l_adv.detach())
        self._update(loss)
        if head == "class":
            self.class_steps += 1
        else:
            self.shared_steps += 1
        return out

    def alternating_step(self, class_batch: tuple[torch.Tensor, torch.Tensor],
                         shared_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """A class step, then with probability ``p_aux`` a shared step on ``shared_batch()`` (drawn lazily)."""
        out = self.class_step(*class_batch)
        if float(torch.rand((), generator=self.generator)) < self.settings.p_aux:
            out.update(self.shared_step(*shared_batch()))
        return out


EVAL_HEADS = ("class", "shared", "concat")


def evaluate_heads(outputs: Mapping[str, torch.Tensor], labels: torch.Tensor, *,
                   settings: SharingSettings | None = None, **eval_kwargs: Any) -> dict[str, dict[str, Any]]:
    """:func:`dynametric.metrics.evaluate_embeddings` (leave-one-out) of the class head, the shared head and their
    concatenation ``[phi_c; phi_s]`` -> ``{"class": ..., "shared": ..., "concat": ...}``."""
    from dynametric.metrics import evaluate_embeddings

    settings = settings or SharingSettings()
    c, s = _heads(outputs, settings)
    embs = {"class": c, "shared": s, "concat": torch.cat([c, s], dim=1)}
    return {name: evaluate_embeddings(e, labels, **eval_kwargs) for name, e in embs.items()}
