"""MIC clustering route (Roth, Brattoli, Ommer, "MIC: Mining Interclass Characteristics for Improved Metric
Learning", ICCV 2019): surrogate classes for the shared head.

1. initial features from a low backbone layer (:func:`layer_features`: ResNet stem + first stage, average-pooled
   with kernel 18 / stride 12 to 4x4, flattened, L2-normalised);
2. per-class standardisation ``z~_i = z_i - mu_{y_i}`` (option: also divide by the class std,
   :func:`standardise_per_class`), leaving the intra-class variation;
3. k-means into ``K`` surrogate classes (:func:`kmeans`: faiss when importable, else the torch implementation of
   :mod:`dynametric.metrics.kmeans` in float64);
4. re-clustering of the current shared embeddings (not standardised) every ``recluster_every`` epochs
   (:class:`SurrogateLabeler`);
5. label noise: with probability 0.2 a surrogate-class slot of a batch is filled from a uniformly random cluster
   while the slot keeps its label (:func:`sample_surrogate_batch`, ``noise_per="slot"``, the default), or, as MIC's
   code does, each image independently is replaced by an image of a uniformly random cluster (``noise_per="image"``,
   ``label_noise_per: image`` in the MIC options).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dynametric.errors import ConfigError, InputError
from dynametric.labels import as_label_matrix
from dynametric.metrics.kmeans import lloyd_kmeans

STANDARDISATIONS = ("mean", "mean_std", "none")


def standardise_per_class(features: torch.Tensor, labels: torch.Tensor, mode: str = "mean",
                          eps: float = 1e-8) -> torch.Tensor:
    """``z_i - mu_{y_i}`` (``mean``), ``(z_i - mu_{y_i}) / sigma_{y_i}`` element-wise (``mean_std``; population std,
    ``eps`` added) or ``z`` unchanged (``none``). Vectorised with ``index_add``; ``labels`` is ``[N]``."""
    if mode not in STANDARDISATIONS:
        raise ConfigError(f"unknown standardisation {mode!r}; expected one of {list(STANDARDISATIONS)}",
                          key="standardise")
    if features.dim() != 2:
        raise InputError(f"features must be [N, F], got {tuple(features.shape)}", key="features")
    labels = as_label_matrix(labels, name="labels", num_rows=features.shape[0])[:, 0]
    if mode == "none":
        return features.clone()
    x = features.double()
    _, inv, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    sums = torch.zeros(counts.numel(), x.shape[1], dtype=x.dtype).index_add_(0, inv, x)
    mean = sums / counts.unsqueeze(1).to(x.dtype)
    out = x - mean[inv]
    if mode == "mean_std":
        var = torch.zeros_like(mean).index_add_(0, inv, out * out) / counts.unsqueeze(1).to(x.dtype)
        out = out / (var.sqrt()[inv] + eps)
    return out.to(features.dtype)


def kmeans(x: torch.Tensor, k: int, *, n_iter: int = 50, seed: int = 0, n_init: int = 1,
           backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """k-means of ``x [N, F]`` into ``k`` clusters -> ``(assignments LongTensor[N], centres [k, F])``.

    ``backend``: ``faiss`` (``faiss.Kmeans``), ``torch`` (Lloyd iterations with k-means++ seeding, empty clusters
    re-seeded) or ``auto`` (faiss when importable). Every cluster id in ``[0, k)`` is used when ``N >= k`` and the
    points are distinct (torch backend guarantees it; faiss's assignments are checked and, if a cluster is empty,
    the torch backend is used instead)."""
    if x.dim() != 2:
        raise InputError(f"k-means input must be [N, F], got {tuple(x.shape)}", key="features")
    if isinstance(k, bool) or k < 1 or k > x.shape[0]:
        raise ConfigError(f"k must be in [1, {x.shape[0]}] (the number of points), got {k}", key="num_clusters")
    if backend not in ("auto", "faiss", "torch"):
        raise ConfigError(f"unknown k-means backend {backend!r}; expected auto, faiss or torch", key="backend")
    xf = x.detach().float().cpu().contiguous()
    if backend in ("auto", "faiss"):
        try:
            import faiss  # type: ignore[import-not-found]
        except ImportError:
            if backend == "faiss":
                raise ConfigError("backend 'faiss' requested but faiss is not installed", key="backend") from None
        else:
            km = faiss.Kmeans(xf.shape[1], int(k), niter=int(n_iter), nredo=int(n_init),
                              seed=int(seed) & 0x7FFFFFFF,  # faiss takes a C int; seeds go up to 2**32 - 1
                              verbose=False, min_points_per_centroid=1, max_points_per_centroid=10**9)
            km.train(xf.numpy())
            _, idx = km.index.search(xf.numpy(), 1)
            assign = torch.from_numpy(idx[:, 0]).long()
            if int(torch.unique(assign).numel()) == int(k) or backend == "faiss":
                return assign, torch.from_numpy(km.centroids).float()
    assign, centres, _ = lloyd_kmeans(xf.double(), int(k), seed=int(seed), iters=int(n_iter), restarts=int(n_init),
                                      dtype=torch.float64, empty="reseed", stop="centres", clamp_inertia=False)
    return assign, centres.float()


def layer_features(model: nn.Module, images: torch.Tensor, layer: str, pool_kernel: int = 18,
                   pool_stride: int = 12, grid: int = 4) -> torch.Tensor:
    """Output of submodule ``layer`` of ``model`` (by :meth:`~torch.nn.Module.named_modules` name) for ``images``,
    average-pooled to ``grid x grid`` (kernel 18 / stride 12 as in MIC when the map is large enough, 56 -> 4;
    otherwise adaptive pooling), flattened and L2-normalised: ``[B, C * grid^2]``."""
    modules = dict(model.named_modules())
    if layer not in modules:
        near = [n for n in modules if n][:12]
        raise ConfigError(f"unknown layer {layer!r}; the model has e.g. {near}", key="mic.layer")
    captured: list[torch.Tensor] = []

    def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        captured.append(out)

    handle = modules[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    fmap = captured[-1]
    if fmap.dim() != 4:
        raise InputError(f"layer {layer!r} gives shape {tuple(fmap.shape)}, expected [B, C, H, W]", key="mic.layer")
    fmap = fmap.float()  # pooled and normalised in float32 (a bfloat16 map under bf16-true or autocast)
    if fmap.shape[2] >= pool_kernel and fmap.shape[3] >= pool_kernel:
        pooled = F.avg_pool2d(fmap, pool_kernel, pool_stride)
    else:
        pooled = F.adaptive_avg_pool2d(fmap, grid)
    return F.normalize(pooled.flatten(1), dim=1)


class SurrogateLabeler:
    """Surrogate labels of the training set: initial clustering of per-class-standardised features, then
    re-clustering of the shared embeddings every ``recluster_every`` epochs (epochs counted from 0; re-clusters at
    the start of epochs ``recluster_every, 2 * recluster_every, ...``). :attr:`history` lists ``(epoch, source)``;
    :attr:`events` describes the same clusterings for the run's record (:meth:`event`)."""

    def __init__(self, num_clusters: int, recluster_every: int = 3, standardise: str = "mean",
                 seed: int = 0, backend: str = "auto") -> None:
        if isinstance(recluster_every, bool) or recluster_every < 0:
            raise ConfigError(f"recluster_every must be >= 0 (0: never), got {recluster_every}",
                              key="recluster_every")
        if standardise not in STANDARDISATIONS:
            raise ConfigError(f"unknown standardisation {standardise!r}", key="standardise")
        self.num_clusters = int(num_clusters)
        self.recluster_every = int(recluster_every)
        self.standardise = standardise
        self.seed = int(seed)
        self.backend = backend
        self.labels: torch.Tensor | None = None
        self.history: list[tuple[int, str]] = []
        self.events: list[dict[str, Any]] = []

    def event(self, epoch: int, source: str) -> dict[str, Any]:
        """What a clustering at ``epoch`` from ``source`` gave: ``{"epoch", "source", "num_clusters" (asked),
        "clusters_used" (non-empty), "min_size", "max_size"}`` (sizes in training images). Host values: the labels
        are on the CPU (:func:`kmeans`), and a clustering happens once every few epochs."""
        assert self.labels is not None
        sizes = torch.bincount(self.labels.long().cpu().flatten(), minlength=self.num_clusters)
        used = sizes[sizes > 0]
        return {"epoch": int(epoch), "source": source, "num_clusters": self.num_clusters,
                "clusters_used": int(used.numel()), "min_size": int(used.min()) if used.numel() else 0,
                "max_size": int(used.max()) if used.numel() else 0}

    def initial(self, features: torch.Tensor, class_labels: torch.Tensor) -> torch.Tensor:
        z = standardise_per_class(features, class_labels, self.standardise)
        self.labels, _ = kmeans(z, self.num_clusters, seed=self.seed, backend=self.backend)
        self.history.append((0, "initial"))
        self.events.append(self.event(0, "initial"))
        return self.labels

    def due(self, epoch: int) -> bool:
        return self.recluster_every > 0 and epoch > 0 and epoch % self.recluster_every == 0

    def maybe_recluster(self, epoch: int, embed: Callable[[], torch.Tensor]) -> bool:
        """At a due epoch, cluster ``embed()`` (the shared embeddings of the training set, in dataset order)."""
        if not self.due(epoch):
            return False
        emb = embed()
        self.labels, _ = kmeans(emb, self.num_clusters, seed=self.seed + epoch, backend=self.backend)
        self.history.append((int(epoch), "shared_embedding"))
        self.events.append(self.event(epoch, "shared_embedding"))
        return True


def sample_surrogate_batch(cluster_labels: torch.Tensor, clusters_per_batch: int, m: int, noise: float = 0.2,
                           generator: torch.Generator | None = None, noise_per: str = "slot", *,
                           too_few: Callable[[int], ConfigError] | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One shared-step batch: ``clusters_per_batch`` distinct clusters (uniform), ``m`` images each (with replacement
    when a cluster is small). Label noise (the slot keeps its label): ``noise_per="slot"``: with probability
    ``noise`` all of a slot's images come from one uniformly random cluster; ``noise_per="image"`` (MIC's code):
    each image independently, with probability ``noise``, comes from its own uniformly random cluster. Returns
    ``(indices [P*m], labels [P*m], noisy [P] bool)`` (``noisy[i]``: slot ``i`` has at least one replaced image).
    ``too_few(n)``: the error when ``clusters_per_batch`` exceeds the ``n`` non-empty clusters (the caller's words
    and config key; default: one keyed ``clusters_per_batch``)."""
    if not 0.0 <= noise <= 1.0:
        raise ConfigError(f"noise must be in [0, 1], got {noise}", key="noise")
    if noise_per not in ("slot", "image"):
        raise ConfigError(f"noise_per must be 'slot' or 'image', got {noise_per!r}", key="label_noise_per")
    labels = cluster_labels.long().cpu()
    present = torch.unique(labels)
    if clusters_per_batch > present.numel():
        if too_few is not None:
            raise too_few(int(present.numel()))
        raise ConfigError(f"clusters_per_batch={clusters_per_batch} exceeds the {present.numel()} non-empty clusters",
                          key="clusters_per_batch")
    slots = present[torch.randperm(present.numel(), generator=generator)[:clusters_per_batch]]
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    if noise_per == "image":
        per_image = torch.rand(clusters_per_batch, m, generator=generator) < noise
        random_src = present[torch.randint(present.numel(), (clusters_per_batch, m), generator=generator)]
        src = torch.where(per_image, random_src, slots.unsqueeze(1))
        start = torch.searchsorted(sorted_labels, src)
        count = torch.searchsorted(sorted_labels, src, right=True) - start
        offs = (torch.rand(clusters_per_batch, m, generator=generator) * count).long()
        idx = order[(start + offs).flatten()]
        return idx, slots.repeat_interleave(m), per_image.any(1)
    noisy = torch.rand(clusters_per_batch, generator=generator) < noise
    source = torch.where(noisy, present[torch.randint(present.numel(), (clusters_per_batch,), generator=generator)],
                         slots)
    start = torch.searchsorted(sorted_labels, source)
    count = torch.searchsorted(sorted_labels, source, right=True) - start
    offs = (torch.rand(clusters_per_batch, m, generator=generator) * count.unsqueeze(1)).long()
    idx = order[(start.unsqueeze(1) + offs).flatten()]
    return idx, slots.repeat_interleave(m), noisy


def is_probability(value: Any) -> bool:
    """A number in ``[0, 1]``: an int or float, not a bool (``true`` in a config is no probability), not NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= float(value) <= 1.0


def integer(value: Any) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class MICSettings:
    """The ``method.kwargs`` of ``configs/mic/*.yaml`` (MIC's clustering route), validated by :meth:`from_kwargs`."""

    combination: str = "alternating"
    p_aux: float = 0.8
    adv_step: str = "shared"
    num_clusters: int = 30
    recluster_every: int = 3
    label_noise: float = 0.2
    label_noise_per: str = "slot"
    standardise: str = "mean"
    feature_layer: str = "backbone.body.layer1"
    m_shared: int = 4

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], key: str = "method.kwargs") -> MICSettings:
        """Build from a mapping; unknown keys and out-of-range values raise :class:`ConfigError` naming the key."""
        names = {f.name for f in fields(cls)}
        for name in kwargs:
            if name not in names:
                raise ConfigError(f"unknown MIC option {name!r}; expected one of {sorted(names)}", key=f"{key}.{name}")
        out = cls(**dict(kwargs))
        checks = [
            ("combination", out.combination in ("alternating", "summed"), "'alternating' or 'summed'"),
            ("p_aux", is_probability(out.p_aux), "a probability in [0, 1]"),
            ("adv_step", out.adv_step in ("shared", "class", "both"), "'shared', 'class' or 'both'"),
            ("num_clusters", integer(out.num_clusters) and out.num_clusters >= 2, "an integer >= 2"),
            ("recluster_every", integer(out.recluster_every) and out.recluster_every >= 0,
             "an integer >= 0 (0: never)"),
            ("label_noise", is_probability(out.label_noise), "a probability in [0, 1]"),
            ("label_noise_per", out.label_noise_per in ("slot", "image"), "'slot' or 'image'"),
            ("standardise", out.standardise in STANDARDISATIONS, f"one of {list(STANDARDISATIONS)}"),
            ("feature_layer", isinstance(out.feature_layer, str) and bool(out.feature_layer), "a module name"),
            ("m_shared", integer(out.m_shared) and out.m_shared >= 2, "an integer >= 2"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"expected {expected}, got {getattr(out, name)!r}", key=f"{key}.{name}")
        return out
