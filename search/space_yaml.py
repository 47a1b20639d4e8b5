"""Reading a space file: plain YAML data only, refused before anything is built when it is
not (syntax errors, python tags, duplicate keys, files over MAX_BYTES, aliases expanding beyond
MAX_NODES values), each as one line (`search.space_checks.Invalid`)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from search.space_checks import Invalid

MAX_BYTES = 1_000_000  # a space file is a few KB; larger files are refused unread
MAX_NODES = 100_000  # YAML values after alias expansion (a space file has a few hundred)


class Loader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys and documents whose aliases expand beyond
    MAX_NODES values (checked on the composed node graph, before anything is built)."""

    def compose_document(self) -> Any:
        node = super().compose_document()
        if node is not None and expanded_size(node, {}, set()) > MAX_NODES:
            raise Invalid(f"YAML aliases expand to more than {MAX_NODES} values (expected "
                          "a space file of plain settings)")
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if not isinstance(key, (str, int, float, bool)):
                    continue  # unhashable keys: SafeLoader's own error
                line = key_node.start_mark.line + 1
                if key in first:
                    raise Invalid(f"line {line}: duplicate key {key!r} (first at line "
                                  f"{first[key]}; expected each key once)")
                first[key] = line
        return super().construct_mapping(node, deep=deep)


def expanded_size(node: Any, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """Values `node` stands for with every alias expanded, stopping early past MAX_NODES."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise Invalid("recursive YAML alias (expected a space file of plain settings)")
    open_nodes.add(id(node))
    size = 1
    if isinstance(node, yaml.SequenceNode):
        children: list[Any] = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    else:
        children = []
    for child in children:
        size += expanded_size(child, sizes, open_nodes)
        if size > MAX_NODES:
            break
    open_nodes.discard(id(node))
    sizes[id(node)] = size
    return size


def read_yaml(path: Path) -> Any:
    """Parse with a safe loader; syntax errors, python tags, duplicate keys, oversized files and
    alias bombs become one-line errors."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise Invalid(f"file too large ({size} bytes; expected at most {MAX_BYTES})")
        with path.open("rb") as f:
            data = f.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise Invalid(f"file too large (over {MAX_BYTES} bytes)")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise Invalid(f"cannot read the file ({getattr(e, 'strerror', None) or e})") from None
    try:
        return yaml.load(text, Loader=Loader)
    except RecursionError:
        raise Invalid("YAML nested too deeply (expected a space file of plain settings)") \
            from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "YAML"
        tag = re.search(r"constructor for the tag '([^']*)'", e.problem or "")
        if tag:
            got = tag.group(1).replace("tag:yaml.org,2002:", "!!")
            raise Invalid(f"{where}: unsupported YAML tag (got '{got}'; expected "
                          "plain data: mappings, lists, strings, numbers, booleans)") from None
        context = f" ({e.context})" if e.context else ""
        raise Invalid(f"{where}: invalid YAML: {e.problem}{context}") from None
    except yaml.YAMLError as e:
        raise Invalid(f"invalid YAML: {str(e).splitlines()[0]}") from None
