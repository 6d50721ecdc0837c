"""Read a recipe's YAML text: the data, the file:line of every key, and the refusals plain
yaml.safe_load does not make. Torch-free.

PyYAML keeps the last of two equal keys in a mapping (`name: full` then `name: lora` trains
LoRA) and follows an anchor into itself (`model: &m {x: *m}`), which any walk of the result
recurses on forever. Both are refused here from the composed node graph, with their lines, as is
a text whose aliases expand to more values than any recipe has; merge keys (`<<: *base`) and
aliases that do not loop keep working. import_lf.py reads LLaMA-Factory YAMLs through here too.
"""

from __future__ import annotations

from typing import Any

import yaml

MERGE_TAG = "tag:yaml.org,2002:merge"
# the most values a text may expand to through its aliases: a recipe has a few hundred; aliases of
# aliases multiply (a "billion laughs" text of a few lines expands to billions, which any rendering
# of the values, a message quoting one included, would try to build)
MAX_VALUES = 100_000


class YamlRefusal(Exception):
    """A recipe text that parses as YAML but cannot be a recipe (the message says why and the fix)."""


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _walk(root: yaml.Node, source: str, prefix: str) -> dict[str, str]:
    """{dotted key: 'file:line'}; refuses duplicate keys and recursive aliases on the way.

    A node reached again through an alias is walked once (its keys' origins fall back to the
    alias's key), so nested aliases that expand to billions of nodes cost one pass."""
    origins = {"": source}
    done: set[int] = set()

    def walk(node: yaml.Node, prefix: str, ancestors: tuple[int, ...]) -> None:
        if id(node) in done:
            return
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple, int] = {}
            children: list[tuple[str, int, yaml.Node, str]] = []
            loops: list[tuple[str, int, yaml.Node]] = []
            for key_node, value_node in node.value:
                if (
                    key_node.tag == MERGE_TAG
                ):  # checked for loops only: the merged mapping is walked where it is anchored
                    merged = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                    loops.extend((f"{prefix}<<", _line(key_node), m) for m in merged)
                    continue
                dotted = f"{prefix}{key_node.value}"
                ident = (key_node.tag, key_node.value) if isinstance(key_node, yaml.ScalarNode) else None
                if ident in seen:
                    raise YamlRefusal(
                        f"{source}:{_line(key_node)}: {dotted} is given twice (lines {seen[ident]} and "
                        f"{_line(key_node)}); YAML would silently keep only the last. Fix: keep one of the two lines"
                    )
                if ident is not None:
                    seen[ident] = _line(key_node)
                origins[dotted] = f"{source}:{_line(key_node)}"
                children.append((dotted, _line(key_node), value_node, dotted + "."))
        elif isinstance(node, yaml.SequenceNode):
            children = [
                (f"{prefix.rstrip('.')}[{i}]", _line(item), item, f"{prefix.rstrip('.')}[{i}].")
                for i, item in enumerate(node.value)
            ]
            loops = []
        else:
            return
        inside = (*ancestors, id(node))
        for dotted, line, child in [*loops, *((d, n, c) for d, n, c, _ in children)]:
            if id(child) in inside:
                raise YamlRefusal(
                    f"{source}:{line}: {dotted} is an alias of a node that contains it (a recursive YAML anchor, "
                    f"anchored at line {_line(child)}). Fix: replace the alias by the values it should have"
                )
        for _, _, child, child_prefix in children:
            walk(child, child_prefix, inside)
        done.add(id(node))

    walk(root, prefix, ())
    return origins


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def _check_expansion(root: yaml.Node, source: str) -> None:
    """Refuse a text whose aliases expand to more than MAX_VALUES values; each node is counted once
    (its expanded size remembered), so the check costs one pass over the text as written."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = 1 + sum(size(child) for child in _children(node))
            if sizes[id(node)] > MAX_VALUES:
                raise YamlRefusal(
                    f"{source}:{_line(node)}: this value expands through YAML aliases to more than "
                    f"{MAX_VALUES:,} values (aliases of aliases multiply). Fix: write the values out, "
                    "or use aliases that do not nest"
                )
        return sizes[id(node)]

    size(root)


def load_yaml_text(text: str, source: str, prefix: str = "") -> tuple[Any, dict[str, str]]:
    """(the data, {dotted key: 'file:line'}) of a recipe text. Raises yaml.YAMLError for text
    that is not YAML and YamlRefusal for duplicate keys or a recursive anchor. prefix: the
    dotted key the text is the value of (an override's), for messages."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, {"": source}
        origins = _walk(root, source, prefix)  # before construction: merge keys rewrite the nodes in place
        _check_expansion(root, source)  # after _walk, which refuses the recursive anchors it would loop on
        return loader.construct_document(root), origins
    finally:
        loader.dispose()
