r"""CorrCLIP's region masks: the SAM wrapper paints the release's labels, and the release's
majority vote inside each region on hand cases."""

from __future__ import annotations

import sys

import pytest
import torch

from captum_clip_surgery import region_majority_vote, sam_mask_generator


class _FakeSam:
    r"""segment-anything's ``generate`` output for a 4x5 image: three masks."""

    def __init__(self):
        self.seen = []

    def generate(self, array):
        self.seen.append(array)
        big = torch.zeros(4, 5, dtype=torch.bool)
        big[:, :3] = True
        small = torch.zeros(4, 5, dtype=torch.bool)
        small[0, :2] = True
        other = torch.zeros(4, 5, dtype=torch.bool)
        other[3, 4] = True
        return [{"segmentation": big.numpy(), "area": 12},
                {"segmentation": small.numpy(), "area": 2},
                {"segmentation": other.numpy(), "area": 1}]


def test_sam_mask_generator_paints_the_release_labels():
    fake = _FakeSam()
    masks = sam_mask_generator(fake)
    rgb = torch.rand(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    labels = masks(rgb)
    # smallest first: other -> 1, small -> 2, big -> 3, painted over small
    expected = torch.zeros(4, 5, dtype=torch.long)
    expected[:, :3] = 3
    expected[3, 4] = 1
    assert labels.shape == (2, 4, 5) and labels.dtype == torch.int64
    assert torch.equal(labels[0], expected) and torch.equal(labels[1], expected)
    assert fake.seen[0].dtype.name == "uint8" and fake.seen[0].shape == (4, 5, 3)
    assert (fake.seen[0] == (rgb[0].permute(1, 2, 0) * 255).round().numpy()).all()
    with pytest.raises(ValueError, match="exactly one"):
        sam_mask_generator()
    with pytest.raises(TypeError, match="generate"):
        sam_mask_generator(object())


def test_sam_checkpoint_errors(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="model_type: expected one of"):
        sam_mask_generator(checkpoint=tmp_path / "sam.pth", model_type="vit_xxl")
    with pytest.raises(ValueError, match="no such file"):
        sam_mask_generator(checkpoint=tmp_path / "sam.pth", model_type="vit_b")
    monkeypatch.setitem(sys.modules, "segment_anything", None)
    with pytest.raises(ImportError, match=r"pip install captum-clip-surgery\[sam\]"):
        sam_mask_generator(checkpoint=tmp_path / "sam.pth")


def test_region_majority_vote_by_hand():
    labels = torch.tensor([[[1, 1, 2, 2],
                            [3, 1, 2, 4],
                            [3, 3, 3, 4]]])
    regions = torch.tensor([[[7, 7, 9, 9],
                             [7, 7, 9, 9],
                             [0, 0, 9, 9]]])  # 0, the lowest label: the unsegmented area
    out = region_majority_vote(labels, regions)
    expected = torch.tensor([[[1, 1, 2, 2],
                              [1, 1, 2, 2],
                              [3, 3, 2, 2]]])  # region 7: 1 (3 of 4); 9: 2 (3 of 6)
    assert torch.equal(out, expected) and out.dtype == labels.dtype
    assert torch.equal(labels[0, 1], torch.tensor([3, 1, 2, 4]))  # the input is not written
    # a single map, and regions at another size (nearest neighbour, as the release resizes)
    torch.testing.assert_close(region_majority_vote(labels[0], regions[0]), expected[0])
    big = regions.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    assert torch.equal(region_majority_vote(labels, big), expected)
    # only the unsegmented area: nothing changes
    assert torch.equal(region_majority_vote(labels, torch.zeros_like(labels)), labels)


def test_region_majority_vote_errors():
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="regions: expected 2 maps"):
        region_majority_vote(labels, torch.zeros(3, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels: expected an integer tensor"):
        region_majority_vote(labels.float(), labels)
    with pytest.raises(ValueError, match="regions: expected an integer tensor"):
        region_majority_vote(labels, torch.zeros(2, 4, dtype=torch.long)[0])
