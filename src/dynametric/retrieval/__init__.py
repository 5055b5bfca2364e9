"""dynametric.retrieval: from a trained model to a searchable collection (the commands ``embed``, ``index``,
``search``, ``export``, ``explore`` and ``evaluate``'s file inputs are built on it).

Nothing is imported here (faiss and the image stack load only when a module that needs them is imported); the
entry points, by module:

* :mod:`dynametric.retrieval.model` — :func:`~dynametric.retrieval.model.load_embedder` rebuilds a trained embedder
  from a run's checkpoint and config (:class:`~dynametric.retrieval.model.LoadedEmbedder`);
* :mod:`dynametric.retrieval.embed` — :func:`~dynametric.retrieval.embed.embed_items` embeds image files
  (:func:`~dynametric.retrieval.embed.list_image_folder`, :func:`~dynametric.retrieval.embed.read_image_csv`) into a
  resumable ``embeddings.npy`` folder, read back by :func:`~dynametric.retrieval.embed.load_embedding_set`;
* :mod:`dynametric.retrieval.index` — :class:`~dynametric.retrieval.index.RetrievalIndex` (``build`` / ``save`` /
  ``load`` / ``search``), a faiss index with its items and hierarchical labels (``pip install ".[faiss]"``);
* :mod:`dynametric.retrieval.export` — TorchScript and ONNX export;
* :mod:`dynametric.retrieval.hub` — a run's embedder as a model folder (``save_pretrained`` / ``from_pretrained``);
* :mod:`dynametric.retrieval.pddm_rerank` — PDDM re-ranking of a search's candidates;
* :mod:`dynametric.retrieval.explorer` — the local explorer page of ``dynametric explore``;
* :mod:`dynametric.retrieval.evaluate_io` — the files ``dynametric evaluate`` reads and writes.

See docs/retrieval.md.
"""
