"""TRL's config classes as the schema of the TRL knobs, from a table made from the classes themselves.

Importing `trl.DPOConfig` pulls in transformers and torch (about 10 s of CPU here), and a typo must
stop the CLI in well under a second. So each class's init fields (name, type, default) are kept in
`trl_fields.json` beside this file, written from `dataclasses.fields(...)` of the pinned TRL by

    .venv/bin/python -m alignflow.conf.trl_fields        # after a TRL or transformers upgrade

and a test (tests/unit/test_config.py) fails when the table drifts from the installed classes: a field
renamed, added, removed, retyped or given another default. The classes themselves are imported
only to run their own checks (`__post_init__`) once a config passed these, and to train.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import types
import typing
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

# Where alignflow's TRL config classes live (module:Class); cpo and simpo share CPOConfig; reward is the reward
# model's (conf/reward_model.py).
CLASSES = {
    "dpo": "trl.trainer.dpo_config:DPOConfig",
    "orpo": "trl.experimental.orpo.orpo_config:ORPOConfig",
    "cpo": "trl.experimental.cpo.cpo_config:CPOConfig",
    "simpo": "trl.experimental.cpo.cpo_config:CPOConfig",
    "sft": "trl.trainer.sft_config:SFTConfig",
    "reward": "trl.trainer.reward_config:RewardConfig",
    "model": "trl.trainer.model_config:ModelConfig",
}
TABLE = Path(__file__).with_name("trl_fields.json")
NO_DEFAULT = object()  # a required field, or a default that is no JSON literal (read it from the class)
_BUILTINS = {t.__name__: t for t in (int, float, str, bool, list, dict, tuple, bytes)}


@dataclass(frozen=True)
class TrlField:
    name: str
    annotation: Any  # a typing object; types other than builtins and typing forms read as Any
    source: str  # the annotation as Python prints it
    default: Any  # the literal default, or NO_DEFAULT


def class_name(key: str) -> str:
    return CLASSES[key].rsplit(":", 1)[1]


def config_class(key: str) -> type:
    """The TRL config class itself (imports TRL, transformers and torch)."""
    if key != "dpo":
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # trl.experimental warns on import otherwise
    module, name = CLASSES[key].split(":")
    return getattr(importlib.import_module(module), name)


@functools.cache
def _table() -> dict[str, Any]:
    return json.loads(TABLE.read_text())


@functools.cache
def fields(key: str) -> dict[str, TrlField]:
    """The init fields of CLASSES[key], in dataclass order, as the table holds them."""
    return {
        row["name"]: TrlField(row["name"], decode(row["type"]), row["source"], row.get("default", NO_DEFAULT))
        for row in _table()["classes"][key]
    }


def default(key: str, name: str) -> Any:
    """TRL's default for field `name` of CLASSES[key]."""
    value = fields(key)[name].default
    if value is NO_DEFAULT:  # not a JSON literal: ask the class
        import dataclasses

        field = {f.name: f for f in dataclasses.fields(config_class(key))}[name]
        value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    return value


# --- the table, from the classes -----------------------------------------------------------------


def encode(annotation: Any) -> Any:
    """A JSON form of a field's type: a builtin's name, "None", "Any", {"union": [...]}, {"literal": [...]},
    {"of": "list", "args": [...]}; anything else (an enum, torch.dtype) is {"other": its name}."""
    if annotation is type(None) or annotation is None:
        return "None"
    if annotation is Any:
        return "Any"
    if (
        isinstance(annotation, type)
        and annotation.__name__ in _BUILTINS
        and _BUILTINS[annotation.__name__] is annotation
    ):
        return annotation.__name__
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return {"union": [encode(a) for a in args]}
    if origin is typing.Literal:
        return {"literal": list(args)}
    if origin in (list, dict, tuple):
        return {"of": origin.__name__, "args": [encode(a) for a in args]}
    return {"other": getattr(annotation, "__qualname__", repr(annotation))}


def decode(node: Any) -> Any:
    """The typing object pydantic validates a knob against (the inverse of `encode`, with `other` as Any)."""
    if isinstance(node, str):
        return {"None": type(None), "Any": Any}.get(node) or _BUILTINS[node]
    if "union" in node:
        return typing.Union[tuple(decode(a) for a in node["union"])]  # noqa: UP007 - built from a list
    if "literal" in node:
        return typing.Literal[tuple(node["literal"])]
    if "of" in node:
        origin, args = _BUILTINS[node["of"]], tuple(decode(a) for a in node["args"])
        return origin[args if len(args) > 1 else args[0]] if args else origin
    return Any


def _literal_default(field) -> Any:
    value = (
        field.default_factory() if field.default is MISSING and field.default_factory is not MISSING else field.default
    )
    if value is MISSING:
        return NO_DEFAULT
    try:
        return value if json.loads(json.dumps(value)) == value and not hasattr(value, "value") else NO_DEFAULT
    except (TypeError, ValueError):
        return NO_DEFAULT


def _source(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return repr(annotation).replace("typing.", "").replace("NoneType", "None")


def build_table() -> dict[str, Any]:
    """The table as the installed TRL's classes define it (imports TRL, transformers and torch)."""
    import dataclasses
    from importlib.metadata import version

    classes: dict[str, list[dict[str, Any]]] = {}
    for key in CLASSES:
        rows = []
        for field in (f for f in dataclasses.fields(config_class(key)) if f.init):
            row = {"name": field.name, "type": encode(field.type), "source": _source(field.type)}
            value = _literal_default(field)
            if value is not NO_DEFAULT:
                row["default"] = value
            rows.append(row)
        classes[key] = rows
    return {"trl": version("trl"), "transformers": version("transformers"), "classes": classes}


def drift(table: dict[str, Any], built: dict[str, Any]) -> list[str]:
    """What differs between two tables, one line per field (empty: the same)."""
    lines = []
    for key in sorted({*table["classes"], *built["classes"]}):
        have = {r["name"]: r for r in table["classes"].get(key, [])}
        want = {r["name"]: r for r in built["classes"].get(key, [])}
        lines += [f"{class_name(key)}.{n}: gone from TRL" for n in have if n not in want]
        lines += [f"{class_name(key)}.{n}: new in TRL" for n in want if n not in have]
        lines += [
            f"{class_name(key)}.{n}: {have[n]} in the table, {want[n]} in TRL"
            for n in have
            if n in want and have[n] != want[n]
        ]
        if [n for n in have if n in want] != [n for n in want if n in have]:
            lines.append(f"{class_name(key)}: fields in another order")
    return lines


if __name__ == "__main__":
    TABLE.write_text(json.dumps(build_table(), indent=1) + "\n")
    print(f"wrote {TABLE} ({TABLE.stat().st_size:,} bytes)")
