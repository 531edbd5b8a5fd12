r"""The public namespace: flat, exported names only, and submodules stay modules."""

from __future__ import annotations

import importlib
import inspect
import types

import captum_clip_surgery as cs


def test_every_exported_name_exists_and_is_public():
    assert len(cs.__all__) == len(set(cs.__all__))
    for name in cs.__all__:
        assert hasattr(cs, name), name
        assert not name.startswith("_"), name
    assert "TokenGrid" not in cs.__all__ and not hasattr(cs, "TokenGrid")
    assert "plot_text_grid" in cs.__all__


def test_feature_surgery_module_and_function_both_importable():
    module = importlib.import_module("captum_clip_surgery.core.feature_surgery")
    assert isinstance(module, types.ModuleType)
    import captum_clip_surgery.core as core

    assert core.feature_surgery is module  # the package attribute is the module, not a function
    assert cs.feature_surgery_scores is module.feature_surgery_scores
    assert inspect.isfunction(module.feature_surgery)


def test_submodules_of_exported_functions_stay_modules():
    # no exported name shadows a submodule of the package
    import pkgutil

    for info in pkgutil.iter_modules(cs.__path__):
        attr = getattr(cs, info.name, None)
        assert attr is None or isinstance(attr, types.ModuleType), info.name


def _exported_classes():
    return [(name, getattr(cs, name)) for name in cs.__all__ if inspect.isclass(getattr(cs, name))]


def test_every_exported_class_spells_out_its_parameters():
    for name, cls in _exported_classes():
        params = inspect.signature(cls).parameters.values()
        variadic = [p.name for p in params if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        assert variadic == [], f"{name}{inspect.signature(cls)}"


def test_attribution_classes_follow_one_naming_pattern_old_names_are_aliases():
    from captum.attr import Attribution

    aliases = {"CLIPSimilarityMap": "RawCLIPAttribution",
               "CLIPAttentionRelevance": "CheferAttribution"}
    for name, cls in _exported_classes():
        if not issubclass(cls, Attribution):
            continue
        if name in aliases:
            assert cls is getattr(cs, aliases[name]), name
        else:
            assert name.endswith("Attribution") and cls.__name__ == name, name


def test_bases_are_exported_and_say_what_a_subclass_implements():
    bases = {
        "ClassifierAttribution": "attribute",
        "TokenMapAttribution": "token_features",
        "LastBlockAttribution": "last_block_tokens",
        "RelevanceMapAttribution": "relevance",
    }
    for name, method in bases.items():
        cls = getattr(cs, name)
        doc = inspect.getdoc(cls)
        assert "subclass implements" in doc and method in doc, name
    assert inspect.getdoc(cs.CLIPAdapter).count("implements") >= 1
