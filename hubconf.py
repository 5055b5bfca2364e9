"""torch.hub entry points: ``torch.hub.load("<owner>/dynametric", "embedder", "<model folder or Hub repo id>")``.

* ``embedder(source, **kwargs)``: a trained embedder from a model folder (``Embedder.save_pretrained``), a
  ``dynametric train`` run folder, or a Hugging Face repository id (``huggingface_hub``); eval mode.
* ``build_embedder(**kwargs)``: a new embedder, same arguments as ``dynametric.models.build_embedder``.
"""

import sys
from pathlib import Path

dependencies = ["torch", "torchvision", "timm", "safetensors", "yaml"]

try:
    import dynametric  # noqa: F401
except ImportError:  # a plain checkout loaded by torch.hub: the package lives in src/
    sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))


def embedder(source, **kwargs):
    """A trained dynametric embedder (see ``dynametric.models.hub.from_pretrained``)."""
    from dynametric.models.hub import from_pretrained

    return from_pretrained(source, **kwargs)


def build_embedder(**kwargs):
    """A new (untrained, or ImageNet-pretrained with ``pretrained=True``) dynametric embedder."""
    from dynametric.models import build_embedder as build

    return build(**kwargs)
