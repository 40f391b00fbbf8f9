"""YAML as a person means it: the loader of config files and command-line YAML values.

PyYAML's safe loader runs no code, but it takes a few things in silence that a config file must
not: an alias "bomb" (a 1 KB document whose aliases expand to billions of nodes, which the
validator and every copy then walk), a key given twice (the last one wins), and YAML 1.1's
surprises: ``m: 021`` is the octal number 17 and ``t: 1:30`` the base-60 number 90. These are
refused in one line naming the line. YAML 1.1's other booleans (yes, no, on, off in any case)
are kept as written (`Word`) until the schema says which the key wants: ``flip: yes`` is true,
``run: no`` the name "no" (`ifcn.config` resolves them).
"""

from __future__ import annotations

import re
from typing import IO, Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

# Far above any real config (the schema has ~120 keys), far below what costs memory.
MAX_NODES = 10_000
MAX_BYTES = 1 << 20
_MERGE_TAG = "tag:yaml.org,2002:merge"
_OCTAL = re.compile(r"[-+]?0[0-9_]+")
_BASE_60 = re.compile(r"[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?")


class StrictYamlError(yaml.YAMLError):
    """A document YAML reads, but not as its writer meant: one line, naming the line."""


class Word(str):
    """A plain scalar that YAML 1.1 reads as a boolean (yes, no, on, off), kept as written:
    `boolean` gives the value YAML 1.1 means, the text itself is the string."""

    @property
    def boolean(self) -> bool:
        return self.lower() in ("yes", "on")


def _line(node: Node) -> int:
    return node.start_mark.line + 1


class _Loader(yaml.SafeLoader):
    def compose_mapping_node(self, anchor: str | None) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], int] = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode) or key.tag == _MERGE_TAG:
                continue
            if (key.tag, key.value) in seen:
                raise StrictYamlError(
                    f"line {_line(key)}: key {key.value!r} given twice in one mapping "
                    f"(also on line {seen[key.tag, key.value]})"
                )
            seen[key.tag, key.value] = _line(key)
        return node

    def compose_document(self) -> Node:
        node = super().compose_document()
        _count_nodes(node)
        return node


def _count_nodes(root: Node) -> int:
    """The nodes of ``root`` with every alias expanded, refused past MAX_NODES (each node's
    count is kept, so a bomb costs one visit per distinct node); a recursive alias is refused."""
    counts: dict[int, int] = {}
    stack: list[tuple[Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, done = stack.pop()
        if id(node) in counts:
            continue
        children = []
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        if done:
            open_nodes.discard(id(node))
            total = 1 + sum(counts[id(child)] for child in children)
            if total > MAX_NODES:
                raise StrictYamlError(
                    f"line {_line(node)}: its aliases expand to more than {MAX_NODES} values; "
                    "a config is a few hundred"
                )
            counts[id(node)] = total
            continue
        if id(node) in open_nodes:
            raise StrictYamlError(f"line {_line(node)}: an alias refers to itself")
        open_nodes.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in open_nodes:
                raise StrictYamlError(f"line {_line(child)}: an alias refers to itself")
            stack.append((child, False))
    return counts[id(root)]


def _construct_int(loader: _Loader, node: ScalarNode) -> int:
    text = node.value
    if node.style is None and _OCTAL.fullmatch(text):
        number = loader.construct_yaml_int(node)
        decimal = ("-" if text.startswith("-") else "") + (
            text.lstrip("+-").replace("_", "").lstrip("0") or "0"
        )
        raise StrictYamlError(
            f"line {_line(node)}: {text} is the octal number {number} in YAML 1.1: write "
            f"{decimal} for the decimal number, or quote it for text"
        )
    _refuse_base_60(node, loader.construct_yaml_int)
    return loader.construct_yaml_int(node)


def _construct_float(loader: _Loader, node: ScalarNode) -> float:
    _refuse_base_60(node, loader.construct_yaml_float)
    return loader.construct_yaml_float(node)


def _refuse_base_60(node: ScalarNode, construct) -> None:
    """YAML 1.1 reads a plain `1:30` as the number 90 (int or float): refused, naming it."""
    if node.style is None and _BASE_60.fullmatch(node.value):
        raise StrictYamlError(
            f"line {_line(node)}: {node.value} is the base-60 number {construct(node)} in YAML "
            "1.1: quote it for text"
        )


def _construct_bool(loader: _Loader, node: ScalarNode) -> bool | Word:
    if node.value.lower() in ("true", "false"):
        return loader.construct_yaml_bool(node)
    return Word(node.value)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_Loader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)


def load(stream: str | IO[str]) -> Any:
    """The one document of ``stream``; StrictYamlError (a yaml.YAMLError) for what is refused,
    yaml.YAMLError for what is not YAML."""
    text = stream if isinstance(stream, str) else stream.read(MAX_BYTES + 1)
    if len(text) > MAX_BYTES:
        raise StrictYamlError(f"more than {MAX_BYTES} characters; a config is a few thousand")
    try:
        return yaml.load(text, Loader=_Loader)
    except RecursionError:
        raise StrictYamlError("nested too deep") from None


def resolve_words(value: Any, schema: dict) -> Any:
    """``value`` with each `Word` read as the schema wants it: a boolean where the schema's
    type allows a boolean, else the text (a name such as ``run: no``)."""
    if isinstance(value, Word):
        kinds = schema.get("type", [])
        kinds = {kinds} if isinstance(kinds, str) else set(kinds)
        return value.boolean if "boolean" in kinds or not kinds else str(value)
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        return {key: resolve_words(item, properties.get(key, {})) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve_words(item, schema.get("items", {})) for item in value]
    return value
