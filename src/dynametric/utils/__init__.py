"""Internal helpers shared by the library and the commands, one concern per module: atomic writes (:mod:`.io`),
readers of user files such as embeddings and label CSVs (:mod:`.readers`), devices and inference precision
(:mod:`.device`), folder locks and process checks (:mod:`.locks`, :mod:`.processes`), name registries with keyed
errors (:mod:`.registry`, :mod:`.logger_registry`), seed ranges (:mod:`.seeds`), ``collect_stats`` support
(:mod:`.stats`), settings shared by overlapping blocks (:mod:`.shared`), resource limits (:mod:`.limits`),
background work ahead of its consumer (:mod:`.ahead`) and plain-text tables (:mod:`.text`). Not a stable API: the
public entry points are listed in :mod:`dynametric`'s docstring.
"""
