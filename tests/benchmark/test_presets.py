r"""The presets against the protocol's table (BENCHMARK-PROTOCOL.md §4-5), overrides, and the
shipped class-name files read as the releases read them."""

from __future__ import annotations

import pytest
import torch

from captum_clip_surgery.benchmark import LAYOUTS, PRESET_FIELDS, get_preset, preset_names
from captum_clip_surgery.benchmark.datasets import (
    class_file_path,
    parse_class_lines,
    read_class_file,
)

# (short side, logit scale, prob_thd) per dataset and repository: the spec's table
TABLE = {
    "sclip": {"voc20": (336, 40, 0), "voc21": (336, 65, 0.1), "context59": (336, 40, 0),
              "context60": (336, 50, 0.1), "coco_object": (336, 50, 0.1),
              "coco_stuff": (448, 40, 0), "cityscapes": (560, 40, 0), "ade20k": (336, 40, 0)},
    "clearclip": {"voc20": (448, 50, 0), "voc21": (448, 50, 0.5), "context59": (448, 50, 0),
                  "context60": (448, 50, 0.15), "coco_object": (448, 50, 0.4),
                  "coco_stuff": (448, 50, 0), "cityscapes": (448, 50, 0), "ade20k": (448, 50, 0)},
    "naclip": {"voc20": (336, 40, 0), "voc21": (336, 40, 0.1), "context59": (336, 40, 0),
               "context60": (336, 40, 0.1), "coco_object": (336, 40, 0.1),
               "coco_stuff": (336, 40, 0), "cityscapes": (560, 40, 0), "ade20k": (336, 40, 0)},
    "proxyclip": {"voc20": (336, 40, 0), "voc21": (336, 40, 0.2), "context59": (336, 40, 0),
                  "context60": (336, 40, 0.15), "coco_object": (336, 40, 0.25),
                  "coco_stuff": (336, 40, 0), "cityscapes": (448, 40, 0), "ade20k": (448, 40, 0)},
}
WINDOW = {"sclip": (224, 112), "naclip": (224, 112), "clearclip": (448, 224),
          "proxyclip": (336, 112)}
WINDOW_EXCEPTIONS = {("clearclip", "cityscapes"): (224, 224), ("proxyclip", "cityscapes"): (224, 112),
                     ("naclip", "voc20"): (0, 112), ("naclip", "voc21"): (0, 112)}


@pytest.mark.parametrize("preset", ["sclip", "clearclip", "naclip", "proxyclip"])
def test_presets_match_the_protocol_table(preset):
    for dataset, (short, scale, prob) in TABLE[preset].items():
        s = get_preset(preset).settings(dataset)
        assert (s.short_side, s.logit_scale, s.prob_thd) == (short, scale, prob), dataset
        assert (s.crop, s.stride) == WINDOW_EXCEPTIONS.get((preset, dataset), WINDOW[preset])
        assert s.area_thd == (0.1 if (preset, dataset) == ("sclip", "voc21") else None)
        assert s.long_side == 2048
        assert s.mean == (122.771, 116.746, 104.094) and s.std == (68.501, 66.632, 70.323)
        assert s.templates == "openai_imagenet"
    s = get_preset(preset).settings("voc21")
    assert s.pamr_steps == (10 if preset == "naclip" else 0)
    assert s.pamr_dilations == (8, 16)
    assert s.padding == {"sclip": None, "naclip": None, "clearclip": "patch", "proxyclip": 56}[preset]
    assert s.synonym_separator == {"sclip": ", ", "naclip": ", ", "clearclip": ",",
                                   "proxyclip": "; "}[preset]
    assert s.method == preset
    assert s.whole_image_resize == ("twice" if preset == "naclip" else "direct")


def test_preset_names_and_errors():
    assert preset_names() == ("sclip", "clearclip", "naclip", "proxyclip")
    with pytest.raises(ValueError, match="preset: expected one of"):
        get_preset("maskclip")
    with pytest.raises(ValueError, match="dataset: preset 'sclip' has no settings for 'voc'"):
        get_preset("sclip").settings("voc")


def test_overrides_are_checked_and_recorded():
    s = get_preset("naclip").settings("context60")
    t = s.replace(prob_thd=0.2, pamr_steps=0, pamr_dilations=[4, 8], padding=56)
    assert (t.prob_thd, t.pamr_steps, t.pamr_dilations, t.padding) == (0.2, 0, (4, 8), 56)
    assert t.overridden == ("prob_thd", "pamr_steps", "pamr_dilations", "padding")
    assert s.prob_thd == 0.1  # the preset is unchanged
    assert t.describe()["prob_thd"] == "0.2 *" and t.describe()["short_side"] == "336"
    assert list(t.describe()) == list(PRESET_FIELDS) + ["method_options"]
    for bad, match in [({"prob": 1}, "overrides: unknown setting"),
                       ({"prob_thd": 1.5}, r"prob_thd: expected a number in \[0, 1\]"),
                       ({"crop": -1}, "crop: expected an int >= 0"),
                       ({"padding": "zeros"}, "padding: expected an int >= 1"),
                       ({"whole_image_resize": "once"}, "whole_image_resize"),
                       ({"std": (1, 0, 1)}, "std: expected a positive number"),
                       ({"templates": "mine"}, "templates: expected one of")]:
        with pytest.raises(ValueError, match=match):
            s.replace(**bad)


@pytest.mark.parametrize("source,separator", [("sclip", ", "), ("clearclip", ","), ("proxyclip", "; ")])
def test_class_files_have_the_datasets_class_counts(source, separator):
    for name, layout in LAYOUTS.items():
        file = get_preset("sclip").settings(name).class_file
        lines = read_class_file(class_file_path(source, file), separator)
        assert len(lines) == layout.num_classes, (source, name)


def test_class_files_synonyms_as_the_spec_lists_them():
    voc21 = read_class_file(class_file_path("sclip", "voc21.txt"), ", ")
    assert len(voc21[0]) == 26 and voc21[0][:3] == ["sky", "wall", "tree"]
    assert voc21[15][0] == "person" and len(voc21[15]) == 7
    assert voc21[20] == ["television monitor", "tv monitor", "monitor", "television", "screen"]
    obj = read_class_file(class_file_path("sclip", "coco_object.txt"), ", ")
    assert len(obj[0]) == 26 and obj[1][-1] == "body"
    # ClearCLIP: plain names and a 'background' line
    c21 = read_class_file(class_file_path("clearclip", "voc21.txt"), ",")
    assert c21[0] == ["background"] and c21[15] == ["person"] and c21[20] == ["tvmonitor"]
    # ProxyCLIP: the background words joined by '; ' (17 for COCO-Object)
    p21 = read_class_file(class_file_path("proxyclip", "voc21.txt"), "; ")
    pobj = read_class_file(class_file_path("proxyclip", "coco_object.txt"), "; ")
    assert len(p21[0]) == 26 and len(pobj[0]) == 17 and "lamp" not in pobj[0]
    # Context60's last line keeps its trailing space, as the releases read it
    assert read_class_file(class_file_path("sclip", "context60.txt"), ", ")[-1] == ["wood "]


def test_parse_class_lines_keeps_what_the_separator_leaves():
    assert parse_class_lines("a, b\nc\n", ",") == [["a", " b"], ["c"]]
    assert parse_class_lines("a; b\r\nc", "; ") == [["a", "b"], ["c"]]
    with pytest.raises(ValueError, match="line 2 has an empty class name"):
        parse_class_lines("a\n\nb", ", ")
    with pytest.raises(ValueError, match="line 1 has an empty class name"):
        parse_class_lines("a, , b", ", ")
    with pytest.raises(ValueError, match="classes: the class-name file is empty"):
        parse_class_lines("", ", ")


def test_method_options_of_the_presets_and_merging():
    # only ProxyCLIP's release runs its method otherwise than the package's default
    for name in ("sclip", "clearclip", "naclip"):
        s = get_preset(name).settings("voc21")
        assert s.method_options == {} and s.describe()["method_options"] == "none"
    s = get_preset("proxyclip").settings("voc21")
    assert s.options_for("proxyclip") == {"empty_rows": "nan"} and s.options_for("sclip") == {}
    assert s.describe()["method_options"] == "proxyclip: empty_rows='nan'"
    # the caller's options win per argument; other methods' are added
    backbone = torch.nn.Linear(2, 2)
    t = s.with_method_options({"proxyclip": {"empty_rows": "largest", "backbone": backbone},
                               "cass": {"beta": 2}})
    assert t.options_for("proxyclip") == {"empty_rows": "largest", "backbone": backbone}
    assert t.options_for("cass") == {"beta": 2} and t.overridden == ("method_options",)
    assert t.describe()["method_options"] == (
        "proxyclip: empty_rows='largest', backbone=<Linear>; cass: beta=2 *")
    u = s.with_method_options({"proxyclip": {"beta": 1.0}})
    assert u.options_for("proxyclip") == {"empty_rows": "nan", "beta": 1.0}
    # nothing given: the same settings, nothing marked overridden; the preset is unchanged
    assert s.with_method_options(None) is s and s.with_method_options({"proxyclip": {}}) is s
    assert get_preset("proxyclip").settings("voc21").options_for("proxyclip") == {
        "empty_rows": "nan"}
    t.options_for("proxyclip")["beta"] = 5  # a copy
    assert "beta" not in t.options_for("proxyclip")
    for bad, match in [([("proxyclip", {})], "method_options: expected a dict"),
                       ({"proxyclip": "nan"}, "method_options: expected a dict"),
                       ({"proxyclip": {"empty rows": "nan"}}, "argument names must be")]:
        with pytest.raises(TypeError, match=match):
            s.with_method_options(bad)
