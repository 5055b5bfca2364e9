"""Sharing Matters (Milbich et al., TPAMI 2020) / MIC (Roth et al., ICCV 2019): combining the class loss, the shared
loss and the decorrelation term (Milbich et al., TPAMI 2020), and evaluating the class head, the shared head and their
concatenation.

* ``summed`` (DiVA): ``L = L_class + alpha_shared * L_share + rho * L_adv`` on one batch, one step. Through the
  engine this is three loss terms (:func:`summed_objectives`; ``configs/sharing/*.yaml``) on
  :class:`~dynametric.engine.module.MetricLearningModule`.
* ``alternating`` (MIC): per iteration a class step on a class-balanced batch, then with probability ``p_aux`` a
  shared step on its own batch (t* triplets on true labels, or surrogate labels from
  :mod:`dynametric.methods.mic`), each its own forward/backward/update; ``rho * L_adv`` rides on the shared step by
  default (``adv_step``). This is the engine's
  :class:`~dynametric.methods.sharing.alternating.AlternatingSharingModule` (method ``sharing_alternating`` or
  ``mic``); its loss terms are the same three, assigned to the steps by their head.

Both combinations train through a Lightning ``Trainer`` (``dynametric train``, or a library caller such as
``benchmarks/claim_sharing.py``); :func:`sharing_param_groups` gives the papers' optimizer groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dynametric.engine.objective import Objective
from dynametric.errors import ConfigError, InputError


@dataclass
class SharingSettings:
    """The weights of the combined loss and the two head names (defaults: the authors' code). The alternating
    combination's own options (``p_aux``, ``adv_step``, shared batches) are
    :class:`~dynametric.methods.sharing.alternating.AlternatingSettings` / the MIC settings."""

    alpha_shared: float = 0.3
    rho: float = 1500.0
    decorrelation: bool = True
    class_head: str = "class"
    shared_head: str = "shared"

    def __post_init__(self) -> None:
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
