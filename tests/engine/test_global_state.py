"""Library calls leave process-wide state as they found it: the global torch RNG (builders), the grad mode
(``dry_run``), warning filters and logger levels (only the CLI quiets Lightning, through ``quiet_lightning``)."""

from __future__ import annotations

import torch

from dynametric.config import load_config
from dynametric.engine.builders import build_components

TINY = ["model.backbone_kwargs={width: 4, depth: 2}", "model.embedding_dim=8"]


def _weights(comps) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in comps.module.state_dict().items()}


def test_build_components_draws_from_the_seed_without_touching_the_global_rng():
    cfg = load_config(None, [*TINY, "trainer.seed=5"])
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = _weights(build_components(cfg, datasets=None))
    assert torch.equal(torch.get_rng_state(), before)
    torch.rand(1000)  # another global state: same weights, because they come from trainer.seed
    second = _weights(build_components(cfg, datasets=None))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    # the weights are those of the seeded global RNG (what the builders did before they stopped seeding globally)
    torch.manual_seed(5)
    from dynametric.engine.builders import build_model

    reference = build_model(cfg).state_dict()
    assert all(torch.equal(reference[k], first[f"embedder.{k}"]) for k in reference)
    other = _weights(build_components(load_config(None, [*TINY, "trainer.seed=6"]), datasets=None))
    assert any(not torch.equal(first[k], other[k]) for k in first)
