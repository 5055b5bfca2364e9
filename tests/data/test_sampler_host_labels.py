"""Samplers read their labels with numpy: labels on an accelerator are first copied to the host."""

import pytest
import torch

from dynametric.data.samplers import HierarchicalSampler, MPerClassSampler, ThreeScaleSampler


class AcceleratorLabels(torch.Tensor):
    """A stand-in for a CUDA tensor where there is no GPU: ``.numpy()`` fails with torch's CUDA message (as it does
    on a CUDA tensor), ``.cpu()`` gives a plain host tensor (as it does for a CUDA tensor)."""

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor to "
                        "host memory first.")

    def cpu(self, *args, **kwargs):
        return self.as_subclass(torch.Tensor).clone()


LABELS = torch.stack([torch.arange(32) // 2, torch.arange(32) // 8], 1)


def _builders(labels):
    return {"MPerClassSampler": lambda: MPerClassSampler(labels, m=2, batch_size=8, seed=3),
            "ThreeScaleSampler": lambda: ThreeScaleSampler(labels, k=2, items_per_batch=2, seed=3),
            "HierarchicalSampler": lambda: HierarchicalSampler(labels, batch_size=8, samples_per_class=2,
                                                                         parents_per_batch=2, seed=3)}


def test_the_stand_in_fails_as_a_cuda_tensor_would():
    with pytest.raises(TypeError, match="cuda"):
        LABELS.as_subclass(AcceleratorLabels).contiguous().numpy()


@pytest.mark.parametrize("name", ["MPerClassSampler", "ThreeScaleSampler", "HierarchicalSampler"])
def test_samplers_take_accelerator_labels_and_sample_as_with_host_labels(name):
    expected = _builders(LABELS)[name]()
    sampler = _builders(LABELS.as_subclass(AcceleratorLabels))[name]()
    assert sampler.labels_digest == expected.labels_digest
    assert list(sampler) == list(expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["MPerClassSampler", "ThreeScaleSampler", "HierarchicalSampler"])
def test_samplers_take_cuda_labels(name):
    assert list(_builders(LABELS.cuda())[name]()) == list(_builders(LABELS)[name]())
