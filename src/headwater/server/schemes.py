"""A URL's scheme picks an implementation (broadcaster's way): ``memory://``, ``sqlite:///...``, ``redis://...``.

One lookup for the stores and the live logs alike: the scheme names a module of the package and a class in it,
and only that module is imported, so a driver that is not installed costs nothing until its URL is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping


def class_for_url(url: str, package: str, schemes: Mapping[str, tuple[str, str]], what: str) -> tuple[str, type]:
    """``(scheme, class)`` for ``url``; ``ValueError`` naming the known schemes, or the import that failed."""
    scheme, sep, _ = url.partition("://")
    if not sep or scheme not in schemes:
        known = ", ".join(f"{s}://" for s in schemes)
        raise ValueError(f"unknown {what} URL {url!r}: it must start with one of {known}")
    module_name, class_name = schemes[scheme]
    try:
        module = importlib.import_module(f"{package}.{module_name}")
    except ImportError as exc:
        raise ValueError(f"the {scheme}:// {what} is not available: {exc}") from None
    cls: type = getattr(module, class_name)
    return scheme, cls
