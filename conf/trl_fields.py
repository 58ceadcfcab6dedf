"""TRL's config classes as the schema of the TRL knobs: their fields read from the installed source.

Importing `trl.DPOConfig` pulls in transformers and torch (about 10 s of CPU here), and a typo must
stop the CLI in well under a second. So the fields (name, type, default) are read from the
classes' source with `ast`, following their bases (DPOConfig -> trl's _BaseConfig ->
transformers.TrainingArguments) the way the dataclass machinery would. The classes themselves are
imported only to run their own checks (`__post_init__`) once a config passed these, and to train.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import os
import threading
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Where alignflow's TRL config classes live (module:Class); cpo and simpo share CPOConfig.
CLASSES = {
    "dpo": "trl.trainer.dpo_config:DPOConfig",
    "orpo": "trl.experimental.orpo.orpo_config:ORPOConfig",
    "cpo": "trl.experimental.cpo.cpo_config:CPOConfig",
    "simpo": "trl.experimental.cpo.cpo_config:CPOConfig",
    "sft": "trl.trainer.sft_config:SFTConfig",
    "model": "trl.trainer.model_config:ModelConfig",
}
NO_DEFAULT = object()  # a required field, or a default that is not a literal (read it from the class)


@dataclass(frozen=True)
class TrlField:
    name: str
    annotation: Any  # a typing object; names the source does not define here read as Any
    source: str  # the annotation as TRL writes it
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
def fields(key: str) -> dict[str, TrlField]:
    """The init fields of CLASSES[key], in dataclass order (bases first, a subclass's override in place)."""
    module, name = CLASSES[key].split(":")
    return _class_fields(module, name)


def default(key: str, name: str) -> Any:
    """TRL's default for field `name` of CLASSES[key]."""
    value = fields(key)[name].default
    if value is NO_DEFAULT:  # not a literal in the source: ask the class
        import dataclasses

        field = {f.name: f for f in dataclasses.fields(config_class(key))}[name]
        value = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    return value


# --- reading dataclasses from source --------------------------------------------------------------


def _module_file(module: str) -> Path:
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)  # a top-level spec: finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{top} is not installed")
    base = Path(next(iter(spec.submodule_search_locations))).joinpath(*rest)
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


_PARSING = threading.Lock()


@functools.cache
def _parse(module: str) -> ast.Module:
    # CPython before 3.11.8 keeps ast's recursion depth per interpreter, not per thread: a parse that
    # overlaps one in another thread can fail with "SystemError: AST constructor recursion depth mismatch"
    # (python/cpython#106905). Ours are one at a time; one by another thread of the process (seen in a
    # deployment's flow run, where Prefect's threads parse too) is waited out by parsing again.
    path = _module_file(module)
    source, filename = path.read_text(), str(path)
    with _PARSING:
        for attempt in range(4):
            try:
                return ast.parse(source, filename=filename)
            except SystemError as exc:
                if "recursion depth mismatch" not in str(exc):
                    raise
                time.sleep(0.05 * (attempt + 1))
        return ast.parse(source, filename=filename)  # the last try: its error, if any, is the caller's


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if _module_file(module).name == "__init__.py" else module.split(".")[:-1]
    package = package[: len(package) - node.level + 1]
    return ".".join([*package, *([node.module] if node.module else [])])


def _locate(module: str, name: str) -> tuple[str, ast.ClassDef]:
    """The module defining class `name` as seen from `module`: defined there, imported, or lazily exported
    (an `_import_structure` dict of submodule -> names, as transformers and trl declare them)."""
    tree = _parse(module)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module, node
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            original = next(a.name for a in node.names if (a.asname or a.name) == name)
            return _locate(_absolute(module, node), original)
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and isinstance(value, ast.List | ast.Tuple)
                    and any(isinstance(e, ast.Constant) and e.value == name for e in value.elts)
                ):
                    return _locate(f"{module}.{key.value}", name)
    raise LookupError(f"class {name} not found from {module}")


def _class_fields(module: str, name: str) -> dict[str, TrlField]:
    where, node = _locate(module, name)
    found: dict[str, TrlField] = {}
    for base in node.bases:
        if isinstance(base, ast.Name) and base.id != "object":
            found.update(_class_fields(where, base.id))
    for item in node.body:
        if not isinstance(item, ast.AnnAssign) or not isinstance(item.target, ast.Name):
            continue
        if "ClassVar" in ast.unparse(item.annotation) or _keyword(item.value, "init") is False:
            continue
        annotation = item.annotation
        found[item.target.id] = TrlField(
            item.target.id, _annotation(annotation), ast.unparse(annotation), _default(item.value)
        )
    return found


def _keyword(call: ast.expr | None, name: str) -> Any:
    if isinstance(call, ast.Call):
        for kw in call.keywords:
            if kw.arg == name:
                return _literal(kw.value)
    return None


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return NO_DEFAULT


def _default(value: ast.expr | None) -> Any:
    if value is None:
        return NO_DEFAULT
    if isinstance(value, ast.Call) and ast.unparse(value.func) in ("field", "dataclasses.field"):
        for kw in value.keywords:
            if kw.arg == "default":
                return _literal(kw.value)
            if kw.arg == "default_factory":
                factory = kw.value
                if isinstance(factory, ast.Lambda):
                    return _literal(factory.body)
                return {"list": [], "dict": {}}.get(ast.unparse(factory), NO_DEFAULT)
        return NO_DEFAULT
    return _literal(value)


_TYPING = {
    **{n: getattr(typing, n) for n in ("Any", "Optional", "Union", "Literal", "List", "Dict", "Tuple")},
    **{t.__name__: t for t in (int, float, str, bool, list, dict, tuple, bytes)},
}


def _annotation(node: ast.expr) -> Any:
    """A typing object for an annotation's source: builtins and typing forms as written; any other
    name (an enum, torch.dtype) reads as Any, so TRL's own __post_init__ is what checks it."""
    if isinstance(node, ast.Constant):
        return _annotation(ast.parse(node.value, mode="eval").body) if isinstance(node.value, str) else node.value
    if isinstance(node, ast.Name):
        return _TYPING.get(node.id, Any)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return typing.Union[_annotation(node.left), _annotation(node.right)]  # noqa: UP007
    if isinstance(node, ast.Subscript):
        origin = _annotation(node.value)
        if origin is Any:
            return Any
        parts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if origin is typing.Literal:
            return typing.Literal[tuple(ast.literal_eval(p) for p in parts)]
        args = tuple(_annotation(p) for p in parts)
        return origin[args if len(args) > 1 else args[0]]
    return Any
