"""BN-Inception (Inception-v2 with batch normalisation), the backbone of the pre-2020 DML literature.

Architecture of Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal
Covariate Shift" (ICML 2015), in the Caffe variant that DML papers (lifted structure, Proxy Anchor, Reality Check,
MIC) load from ImageNet weights. No maintained library ships it, so it is defined here.

Layer names follow the widely used converted Caffe weights (``bn_inception-52deb4733.pth``): top-level modules
``conv1_7x7_s2``, ``conv1_7x7_s2_bn``, ``inception_3a_1x1``, ``inception_3a_1x1_bn``, …, ``inception_5b_pool_proj_bn``,
and the classifier ``last_linear`` (not built here: the backbone ends at the 1024-channel feature map). A state
dict with those keys loads directly (see :meth:`BNInception.adapt_state_dict` for the ``[1, C]`` BatchNorm tensors
that file stores).

Input convention of those weights: **BGR, range 0–255, minus the per-channel mean (104, 117, 128)**, std 1. With
``input_adapter="imagenet_rgb"`` (default) the module takes the usual ImageNet-normalised RGB tensors
(``(x/255 - mean_rgb) / std_rgb``) and converts them itself, so the data pipeline needs no special transform;
``input_adapter="none"`` feeds the input unchanged (for Caffe-style preprocessed tensors).

Spatial sizes at 224 × 224 input: 112 → 56 → 28 → 14 → 7; output ``[B, 1024, 7, 7]``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynametric.errors import ConfigError

BNINCEPTION_URL = "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth"
"""The converted Caffe ImageNet weights used by the DML literature (Cadene's ``pretrainedmodels``)."""

CAFFE_MEAN_BGR = (104.0, 117.0, 128.0)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class _InceptionSpec:
    """Widths of one inception block. ``c1x1 = 0`` means no 1×1 branch; ``pool_proj = 0`` means a bare pooling
    branch (the stride-2 reduction blocks 3c and 4e); ``stride`` applies to the last conv of the 3×3 branches."""

    c1x1: int
    c3x3_reduce: int
    c3x3: int
    double_reduce: int
    double_3x3: int
    pool: Literal["avg", "max"]
    pool_proj: int
    stride: int = 1


# Block widths of BN-Inception (Ioffe & Szegedy 2015, Fig. 5 / Caffe prototxt).
_BLOCKS: tuple[tuple[str, int, _InceptionSpec], ...] = (
    ("inception_3a", 192, _InceptionSpec(64, 64, 64, 64, 96, "avg", 32)),
    ("inception_3b", 256, _InceptionSpec(64, 64, 96, 64, 96, "avg", 64)),
    ("inception_3c", 320, _InceptionSpec(0, 128, 160, 64, 96, "max", 0, stride=2)),
    ("inception_4a", 576, _InceptionSpec(224, 64, 96, 96, 128, "avg", 128)),
    ("inception_4b", 576, _InceptionSpec(192, 96, 128, 96, 128, "avg", 128)),
    ("inception_4c", 576, _InceptionSpec(160, 128, 160, 128, 160, "avg", 96)),
    ("inception_4d", 576, _InceptionSpec(96, 128, 192, 160, 192, "avg", 96)),
    ("inception_4e", 576, _InceptionSpec(0, 128, 192, 192, 256, "max", 0, stride=2)),
    ("inception_5a", 1024, _InceptionSpec(352, 192, 320, 160, 224, "avg", 128)),
    ("inception_5b", 1024, _InceptionSpec(352, 192, 320, 192, 224, "max", 128)),
)


class _ReductionPool(nn.Module):
    """Max-pool 3×3 / 2 (ceil mode) of the stride-2 blocks 3c and 4e.

    Caffe's ceil-mode pooling and the floor-mode stride-2 convolutions beside it disagree by one on odd feature-map
    sides (a 200 px input reaches block 3c at 25 × 25: convs give 13, the pool 12), where the Caffe model cannot
    run at all. Odd sides get one pixel of (-inf) padding so that the branches agree; on even sides (every input
    of 224, 227, 256 px) this is exactly the original pooling.
    """

    def forward(self, x: Tensor) -> Tensor:
        pad = (x.shape[-2] % 2, x.shape[-1] % 2)
        return F.max_pool2d(x, 3, stride=2, padding=pad, ceil_mode=True)


def _out_channels(in_ch: int, spec: _InceptionSpec) -> int:
    pool_ch = spec.pool_proj if spec.pool_proj else in_ch
    return spec.c1x1 + spec.c3x3 + spec.double_3x3 + pool_ch


class BNInception(nn.Module):
    """BN-Inception feature extractor: ``forward(x)`` returns the ``[B, 1024, H/32, W/32]`` feature map.

    Every conv is followed by BatchNorm (affine) and ReLU; convs keep their bias, as in the converted Caffe
    weights. Modules are stored flat under the Caffe layer names so that published state dicts load unchanged.
    """

    _adapt_scale: Tensor
    _adapt_shift: Tensor

    num_features: int = 1024
    classifier_prefixes: tuple[str, ...] = ("last_linear.",)

    def __init__(self, in_chans: int = 3, input_adapter: Literal["imagenet_rgb", "none"] = "imagenet_rgb") -> None:
        super().__init__()
        if input_adapter not in ("imagenet_rgb", "none"):
            raise ConfigError(f"unknown BN-Inception input_adapter {input_adapter!r}; expected 'imagenet_rgb' or "
                              "'none'", key="model.backbone_kwargs.input_adapter")
        if input_adapter == "imagenet_rgb" and in_chans != 3:
            raise ConfigError("input_adapter 'imagenet_rgb' needs in_chans=3; use input_adapter='none'",
                              key="model.in_chans")
        self.input_adapter = input_adapter
        # x_caffe[c] = 255 * (x[rgb(c)] * std[rgb(c)] + mean[rgb(c)]) - caffe_mean[c], channels reversed to BGR.
        std = torch.tensor(IMAGENET_STD_RGB[::-1]).view(1, 3, 1, 1)
        mean = torch.tensor(IMAGENET_MEAN_RGB[::-1]).view(1, 3, 1, 1)
        self.register_buffer("_adapt_scale", 255.0 * std, persistent=False)
        self.register_buffer("_adapt_shift", 255.0 * mean - torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1),
                             persistent=False)

        self._conv_bn("conv1_7x7_s2", in_chans, 64, 7, stride=2, padding=3)
        self.pool1_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self._conv_bn("conv2_3x3_reduce", 64, 64, 1)
        self._conv_bn("conv2_3x3", 64, 192, 3, padding=1)
        self.pool2_3x3_s2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self._blocks: list[tuple[str, _InceptionSpec]] = []
        for name, in_ch, spec in _BLOCKS:
            if spec.c1x1:
                self._conv_bn(f"{name}_1x1", in_ch, spec.c1x1, 1)
            self._conv_bn(f"{name}_3x3_reduce", in_ch, spec.c3x3_reduce, 1)
            self._conv_bn(f"{name}_3x3", spec.c3x3_reduce, spec.c3x3, 3, stride=spec.stride, padding=1)
            self._conv_bn(f"{name}_double_3x3_reduce", in_ch, spec.double_reduce, 1)
            self._conv_bn(f"{name}_double_3x3_1", spec.double_reduce, spec.double_3x3, 3, padding=1)
            self._conv_bn(f"{name}_double_3x3_2", spec.double_3x3, spec.double_3x3, 3, stride=spec.stride,
                          padding=1)
            if spec.stride == 2:
                pool: nn.Module = _ReductionPool()
            elif spec.pool == "avg":
                pool = nn.AvgPool2d(3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
            else:
                pool = nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True)
            self.add_module(f"{name}_pool", pool)
            if spec.pool_proj:
                self._conv_bn(f"{name}_pool_proj", in_ch, spec.pool_proj, 1)
            self._blocks.append((name, spec))
            assert _out_channels(in_ch, spec) == (_BLOCKS[len(self._blocks)][1] if len(self._blocks) < len(_BLOCKS)
                                                  else self.num_features)

    def _conv_bn(self, name: str, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> None:
        self.add_module(name, nn.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=padding, bias=True))
        self.add_module(f"{name}_bn", nn.BatchNorm2d(cout, affine=True))

    def _cbr(self, name: str, x: Tensor) -> Tensor:
        return torch.relu(getattr(self, f"{name}_bn")(getattr(self, name)(x)))

    def _inception(self, name: str, spec: _InceptionSpec, x: Tensor) -> Tensor:
        branches = []
        if spec.c1x1:
            branches.append(self._cbr(f"{name}_1x1", x))
        branches.append(self._cbr(f"{name}_3x3", self._cbr(f"{name}_3x3_reduce", x)))
        d = self._cbr(f"{name}_double_3x3_reduce", x)
        branches.append(self._cbr(f"{name}_double_3x3_2", self._cbr(f"{name}_double_3x3_1", d)))
        p = getattr(self, f"{name}_pool")(x)
        branches.append(self._cbr(f"{name}_pool_proj", p) if spec.pool_proj else p)
        return torch.cat(branches, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        if self.input_adapter == "imagenet_rgb":
            x = x.flip(1) * self._adapt_scale.to(x.dtype) + self._adapt_shift.to(x.dtype)
        x = self.pool1_3x3_s2(self._cbr("conv1_7x7_s2", x))
        x = self._cbr("conv2_3x3", self._cbr("conv2_3x3_reduce", x))
        x = self.pool2_3x3_s2(x)
        for name, spec in self._blocks:
            x = self._inception(name, spec, x)
        return x

    def adapt_state_dict(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Reshape the published file's BatchNorm tensors stored as ``[1, C]`` to this module's ``[C]``.

        Only tensors whose target is 1-D and whose source is ``[1, C]`` with the same ``C`` are reshaped; anything
        else is passed through unchanged so that real mismatches still raise.
        """
        own = self.state_dict()
        out: dict[str, Tensor] = {}
        for key, value in state.items():
            target = own.get(key)
            if (target is not None and target.dim() == 1 and value.dim() == 2 and value.shape[0] == 1
                    and value.shape[1] == target.shape[0]):
                value = value.reshape(target.shape)
            out[key] = value
        return out
