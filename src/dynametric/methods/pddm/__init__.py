"""PDDM (Huang, Loy, Tang, NIPS 2016), gathered: the unit (:class:`dynametric.models.PDDM`), the loss with its
hard-quadruplet mining (:class:`dynametric.losses.PDDMLoss`), test-time re-ranking
(:func:`dynametric.retrieval.pddm_rerank.pddm_rerank`) and the plug-in (``method.name: pddm``, :mod:`.plugin`).
The components stay in their layers (``models/``, ``losses/``, ``miners/``, ``retrieval/``); this package names them."""

from dynametric.methods.pddm.plugin import PDDMMethod

__all__ = ["PDDMMethod"]
