"""dynametric: hierarchy-aware deep metric learning.

Labels everywhere are ``LongTensor[N, S]``: one column per semantic scale, finest first
(a 1-D label tensor is treated as ``S = 1``). See :mod:`dynametric.labels`.
"""

from dynametric.errors import DynametricError, InputError
from dynametric.labels import as_label_matrix, select_scale

__version__ = "0.1.0"

__all__ = ["DynametricError", "InputError", "as_label_matrix", "select_scale", "__version__"]
