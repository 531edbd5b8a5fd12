r"""Prompt templates: checked at construction (issue 18, item 6)."""

from __future__ import annotations

import pytest

from captum_clip_surgery import CLIPSurgeryAttribution, CLIPZeroShotClassifier
from captum_clip_surgery.core.text import validate_templates
from tests.models import tiny_vit


@pytest.mark.parametrize(
    "template,message",
    [
        # the literal "{}" for every class: every prompt identical
        ("{{}}", r"template 1 \('\{\{\}\}'\) must hold exactly one .* got replacement fields: none"),
        ("a {x} of {}", r"got replacement fields: \{x\}, \{\}"),
        ("{} {0}", r"got replacement fields: \{\}, \{0\}"),
        ("{} }", r"is not a valid format string"),
        ("{", r"is not a valid format string"),
        ("{!r}", r"got replacement fields: \{!r\}"),
        ("{:>9}", r"got replacement fields: \{:>9\}"),
        ("a photo", r"got replacement fields: none"),
    ],
)
def test_bad_templates_are_refused_when_the_classifier_is_built(template, message):
    with pytest.raises(ValueError, match=r"^templates: .*" + message):
        CLIPZeroShotClassifier(tiny_vit(), ["dog", "cat"], templates=["a photo of a {}.", template])
    with pytest.raises(ValueError, match="templates: "):
        CLIPSurgeryAttribution(tiny_vit(), texts=["dog"], templates=[template])


def test_the_index_of_the_bad_template_is_named():
    with pytest.raises(ValueError, match=r"templates: template 2 \('\{\{\}\}'\)"):
        validate_templates(["{}", "a {}.", "{{}}"])


@pytest.mark.parametrize("template,filled", [
    ("{}", "dog"),
    ("a photo of a {}.", "a photo of a dog."),
    ("{{ {} }}", "{ dog }"),  # literal braces, doubled, around the one field
    ("{{{}}}", "{dog}"),
])
def test_good_templates_are_kept_and_fill_in_the_text(template, filled):
    assert validate_templates([template]) == (template,)
    assert validate_templates([template])[0].format("dog") == filled


def test_default_templates_all_pass():
    templates = validate_templates(None)
    assert len(templates) == 85
    assert len({t.format("dog") for t in templates}) == 85  # every prompt differs
