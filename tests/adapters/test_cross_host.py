r"""One answer across hosts: the same OpenAI-format weights in open_clip, OpenAI ``clip``
and transformers give the same text features, logits and maps (every method)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import pytest
import torch
from captum.attr import LayerGradCam

from captum_clip_surgery import (
    CLIPAttentionRelevance,
    CLIPSimilarityMap,
    CLIPSurgeryAttribution,
    CLIPZeroShotClassifier,
    MaskCLIPAttribution,
    get_adapter,
)
from captum_clip_surgery.adapters import (
    HFCLIPAdapter,
    HFCLIPPair,
    HFCLIPPairAdapter,
    OpenAICLIPAdapter,
    OpenCLIPAdapter,
)
from tests.adapters import hosts

TEXTS = ["dog", "a red car", "grass"]
TEMPLATES = ["a photo of a {}.", "{}", "there is a {} in the scene."]
TOL = dict(atol=1e-5, rtol=1e-5)


def _outputs(clf: CLIPZeroShotClassifier, images: torch.Tensor) -> Dict[str, torch.Tensor]:
    out = {
        "text features": clf.text_features,
        "logits": clf(images),
        "surgery classes": CLIPSurgeryAttribution(clf).similarity(images, feature_surgery="classes"),
        "surgery empty": CLIPSurgeryAttribution(clf).similarity(images, feature_surgery="empty"),
        "raw": CLIPSimilarityMap(clf).similarity(images),
        "maskclip": MaskCLIPAttribution(clf).similarity(images),
    }
    cam = LayerGradCam(clf, clf.gradcam_layer(-1))
    out["gradcam"] = cam.attribute(images, target=1).detach()
    if clf.adapter.image.blocks:  # attention relevance needs attention blocks
        relevance = CLIPAttentionRelevance(clf)
        out["chefer"] = relevance.attribute(images, target=2, upsample_to_input=False)
    return out


Build = Callable[[Any], Tuple[Any, Optional[Any]]]

HOSTS: Dict[str, Build] = {
    "openai": lambda oc: (hosts.to_openai(oc), None),
    "hf": lambda oc: (hosts.to_hf(oc), hosts.clip_tokenizer()),
    "hf-eager": lambda oc: (hosts.to_hf(oc, attn="eager"), hosts.clip_tokenizer()),
    "hf-legacy-eos": lambda oc: (hosts.to_hf(oc, eos_token_id=2), hosts.clip_tokenizer()),
    "hf-pair": lambda oc: (
        HFCLIPPair(*hosts.to_hf_pair(oc), logit_scale=float(oc.logit_scale.detach().exp())),
        hosts.clip_tokenizer(),
    ),
}
ADAPTER = {"openai": OpenAICLIPAdapter, "hf": HFCLIPAdapter, "hf-eager": HFCLIPAdapter,
           "hf-legacy-eos": HFCLIPAdapter, "hf-pair": HFCLIPPairAdapter}


@pytest.fixture(scope="module")
def vit() -> Any:
    return hosts.openclip_vit()


@pytest.fixture(scope="module")
def resnet() -> Any:
    return hosts.openclip_resnet()


def _images(size: Tuple[int, int], seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vit_reference(vit: Any) -> Dict[Tuple[int, int], Dict[str, torch.Tensor]]:
    clf = CLIPZeroShotClassifier(vit, TEXTS, templates=TEMPLATES)
    assert isinstance(clf.adapter, OpenCLIPAdapter)
    return {size: _outputs(clf, _images(size)) for size in ((32, 32), (40, 48))}


@pytest.mark.slow
@pytest.mark.parametrize("size", [(32, 32), (40, 48)], ids=["native", "non-native"])
@pytest.mark.parametrize("host", list(HOSTS))
def test_vit_hosts_give_one_answer(vit, vit_reference, host, size, snapshot):
    model, tokenizer = HOSTS[host](vit)
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=TEMPLATES, tokenizer=tokenizer)
    assert type(clf.adapter) is ADAPTER[host]
    got = _outputs(clf, _images(size))
    for name, expected in vit_reference[size].items():
        torch.testing.assert_close(got[name], expected, **TOL, msg=lambda m, n=name: f"{n}: {m}")
    snap.assert_unchanged()


@pytest.mark.parametrize("size", [(64, 64), (96, 64)], ids=["native", "non-native"])
def test_resnet_hosts_give_one_answer(resnet, size, snapshot):
    images = _images(size)
    expected = _outputs(CLIPZeroShotClassifier(resnet, TEXTS, templates=TEMPLATES), images)
    model = hosts.to_openai(resnet)
    snap = snapshot(model)
    clf = CLIPZeroShotClassifier(model, TEXTS, templates=TEMPLATES)
    assert isinstance(clf.adapter, OpenAICLIPAdapter) and clf.adapter.image.kind == "attention"
    got = _outputs(clf, images)
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, **TOL, msg=lambda m, n=name: f"{n}: {m}")
    snap.assert_unchanged()


def test_tokenizers_of_every_host_give_the_same_ids(vit):
    r"""open_clip's tokenizer, ``clip.tokenize`` and the transformers CLIP tokenizer
    agree up to the padding after the end-of-text token (0 vs 49407)."""
    texts = ["a photo of a dog.", "Hello, World!! it's 3 cats", ""]
    ids = {
        "open_clip": get_adapter(vit).text.default_tokenizer()(texts),
        "openai": get_adapter(hosts.to_openai(vit)).text.default_tokenizer()(texts),
        "hf": hosts.clip_tokenizer()(texts, padding="max_length", max_length=77,
                                     return_tensors="pt")["input_ids"],
    }
    eot = ids["open_clip"].argmax(dim=-1)
    keep = torch.arange(77)[None] <= eot[:, None]
    for name, value in ids.items():
        assert value.shape == (3, 77), name
        assert torch.equal(value[keep], ids["open_clip"][keep]), name


def test_token_pieces_agree_across_host_tokenizers(vit):
    r"""Word pieces decode alike from the transformers tokenizer, OpenAI's and open_clip's
    ``SimpleTokenizer`` and the shipped fallback vocabulary."""
    from clip.simple_tokenizer import SimpleTokenizer as OpenAISimpleTokenizer

    from captum_clip_surgery.adapters._common import clip_bpe_pieces

    ids = get_adapter(vit).text.default_tokenizer()(["a photo of a café, naïvely!"])[0]
    ids = [int(i) for i in ids[1 : int(ids.argmax())]]
    expected = clip_bpe_pieces(ids, None)
    assert b"".join(p for p, _ in expected) == "aphotoofacafé,naïvely!".encode()
    assert [end for _, end in expected][:4] == [True, True, True, True]
    for tokenizer in (hosts.clip_tokenizer(), hosts.ProcessorLike(hosts.clip_tokenizer()),
                      OpenAISimpleTokenizer()):
        assert clip_bpe_pieces(ids, tokenizer) == expected, type(tokenizer).__name__
    with pytest.raises(TypeError, match="^tokenizer: cannot decode token ids \\[60000\\]"):
        clip_bpe_pieces([320, 60000], None)
