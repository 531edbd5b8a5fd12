r"""Names of a package loaded from its modules on first use (PEP 562).

The public packages (the top level, :mod:`~captum_clip_surgery.adapters`,
:mod:`~captum_clip_surgery.methods`) export names whose modules import heavy libraries
(Captum, open_clip, matplotlib); they list them here instead of importing them, so that
importing the package, or building the command line's parser, stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Mapping, MutableMapping, Tuple

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, names: Mapping[str, str], namespace: MutableMapping[str, Any]
) -> Tuple[Callable[[str], Any], Callable[[], List[str]]]:
    r"""A module's ``__getattr__`` and ``__dir__`` for names defined in its submodules.

    Args:
        package (str): the package's ``__name__``.
        names (dict[str, str]): public name -> submodule (relative to ``package``) that
            defines it.
        namespace (dict): the package's ``globals()``; a loaded name is cached there.

    Returns:
        tuple: ``(__getattr__, __dir__)`` to assign in the package.

    Examples::

        >>> __getattr__, __dir__ = lazy_exports(__name__, {"compare": "apps.comparison"},
        ...                                     globals())
    """
    table: Dict[str, str] = dict(names)

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> List[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
