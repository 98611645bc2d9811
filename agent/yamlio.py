"""YAML loading for every reader in the project: libyaml's speed, PyYAML's safe loader's results and errors.

libyaml's scanner and parser under PyYAML's own safe constructor give the same values as ``yaml.safe_load``
~10-20x faster (policy front matter was 1.5 s of a cold load of 5,000 files; a bundle's YAML checks ~200
ms). Text libyaml refuses, or that holds characters PyYAML's reader rejects, goes to the pure-Python
loader, so every problem is reported in the same words and at the same line either way.
"""

from __future__ import annotations

import contextlib

import yaml

_CSafeLoader = getattr(yaml, "CSafeLoader", None)


def _libyaml_ok(text: str) -> bool:
    return _CSafeLoader is not None and not yaml.reader.Reader.NON_PRINTABLE.search(text)


def load(text: str) -> object:
    """``yaml.safe_load(text)``, fast. Raises ``yaml.YAMLError`` as safe_load would."""
    if _libyaml_ok(text):
        with contextlib.suppress(yaml.YAMLError):
            return yaml.load(text, Loader=_CSafeLoader)  # noqa: S506 - the safe loader, in C
    return yaml.safe_load(text)


def compose(text: str) -> yaml.Node | None:
    """``yaml.compose(text)`` with the safe loader, fast: the node tree, with line marks."""
    if _libyaml_ok(text):
        with contextlib.suppress(yaml.YAMLError):
            return yaml.compose(text, Loader=_CSafeLoader)
    return yaml.compose(text, Loader=yaml.SafeLoader)


def compose_and_load(text: str) -> tuple[yaml.Node | None, object]:
    """``compose(text)`` and ``load(text)`` from one parse: the node tree (for line marks) and its values."""
    if _libyaml_ok(text):
        with contextlib.suppress(yaml.YAMLError):
            return _node_and_data(text, _CSafeLoader)
    return _node_and_data(text, yaml.SafeLoader)


def _node_and_data(text: str, loader_class: type) -> tuple[yaml.Node | None, object]:
    loader = loader_class(text)
    try:  # what yaml.load does (get_single_data), keeping the node it constructs from
        node = loader.get_single_node()
        return node, None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()
