"""Method-level glue that combines losses, miners and models: Sharing Matters / MIC (:mod:`.sharing`, :mod:`.mic`)."""
