"""JSON schema → GBNF for llama.cpp, with strings that are valid JSON.

llama-cpp-python's converter (`llama_grammar.json_schema_to_gbnf`) writes the string character
rule as `[^"\\]`, which lets a model put raw control characters (newline, tab) inside a string:
the output then fails `json.loads` ("Invalid control character"). llama.cpp's own converter
excludes them, as JSON requires; `json_schema_gbnf` applies the same rule.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


def json_schema_gbnf(schema: Mapping[str, Any], prop_order: Sequence[str] = ()) -> str:
    """GBNF (root rule `root`) for JSON documents matching `schema`; raises on schemas it cannot convert."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    grammar = str(json_schema_to_gbnf(json.dumps(dict(schema)), list(prop_order)))
    return "\n".join(
        _JSON_CHAR + line[len(_LOOSE_CHAR) :] if line.startswith(_LOOSE_CHAR) else line
        for line in grammar.splitlines()
    )
