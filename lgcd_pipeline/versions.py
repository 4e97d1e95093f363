"""Code versions: what a stage's Dagster `code_version` is made of.

A stage's code version hashes (1) the source of every `lgcd_core` module the stage runs and (2) the
part of the dataset YAML that configures it (`DatasetConfig.stage_hash`). Dagster derives each
materialization's data version from the code version and the data versions of its inputs, so editing
a stage's code or its YAML section makes that stage stale, and the new data version it gets when
re-materialized makes its downstream stale in turn. Nothing upstream is touched.

Which modules a stage runs is computed, never listed by hand: the stage's entry is its asset function
(the function decorated with ``stage_asset(cfg, stages.<STAGE>, ...)`` under ``lgcd_pipeline/assets/``); the
`lgcd_core` modules imported there, or by its asset module at top level, are the roots, and the
static import graph of `lgcd_core` (imports inside functions included, as are the packages'
``__init__`` files that importing a module runs) closes them transitively.

Only files are parsed (never imported), so loading the definitions stays cheap.
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

from lgcd_core import stages
from lgcd_core.config import DatasetConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "lgcd_core"
STAGES: tuple[str, ...] = stages.NAMES


@cache
def module_files(root: Path = REPO_ROOT) -> dict[str, Path]:
    """Every module of `lgcd_core` under ``root``, by dotted name (a package by its ``__init__``)."""
    files = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def _imported(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The `lgcd_core` modules named by the import statements anywhere in ``tree``."""
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {name for name in found if name in known}


def _with_parents(module: str) -> set[str]:
    """Importing ``a.b.c`` runs ``a`` and ``a.b`` first."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


@cache
def import_graph(root: Path = REPO_ROOT) -> dict[str, frozenset[str]]:
    """Module -> the `lgcd_core` modules its source imports (directly)."""
    files = module_files(root)
    known = set(files)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        direct = _imported(tree, name, path.name == "__init__.py", known)
        graph[name] = frozenset(m for d in direct for m in _with_parents(d) if m in known and m != name)
    return graph


def _stage_of(decorator: ast.expr) -> str | None:
    """``"raw_items"`` for ``@stage_asset(cfg, stages.RAW_ITEMS, ...)``; None for any other decorator.

    The stage is a registry constant of :mod:`lgcd_core.stages` (``stages.RAW_ITEMS`` or an imported
    ``RAW_ITEMS``); anything else as the second argument is a ValueError, not a stage silently missed.
    """
    if not (isinstance(decorator, ast.Call) and getattr(decorator.func, "id", None) == "stage_asset"):
        return None
    arg = decorator.args[1] if len(decorator.args) >= 2 else None
    constant = arg.attr if isinstance(arg, ast.Attribute) else arg.id if isinstance(arg, ast.Name) else None
    entry = getattr(stages, constant, None) if constant else None
    if not isinstance(entry, stages.Stage):
        raise ValueError(f"line {decorator.lineno}: stage_asset's second argument must be a stage of lgcd_core.stages "
                         f"(stages.<STAGE>), not {ast.unparse(arg) if arg else 'nothing'!r}")
    return entry.name


@cache
def stage_roots(root: Path = REPO_ROOT) -> dict[str, frozenset[str]]:
    """Stage -> the `lgcd_core` modules its asset function (and its asset module's top level) imports."""
    known = set(module_files(root))
    roots: dict[str, frozenset[str]] = {}
    for path in sorted((root / "lgcd_pipeline" / "assets").glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        top_level = _imported(ast.Module(body=[n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))],
                                         type_ignores=[]), "", False, known)
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef):
                try:
                    found = [s for s in map(_stage_of, node.decorator_list) if s]
                except ValueError as error:
                    raise ValueError(f"{path}: {error}") from None
                for stage in found:
                    if stage in roots:
                        raise ValueError(f"{path}:{node.lineno}: stage {stage!r} is defined twice")
                    roots[stage] = frozenset(top_level | _imported(node, "", False, known))
    return roots


def _closure(roots: frozenset[str], root: Path) -> tuple[str, ...]:
    """The transitive import closure of ``roots`` in the `lgcd_core` import graph."""
    graph = import_graph(root)
    seen: set[str] = set()
    todo = [m for r in roots for m in _with_parents(r) if m in graph]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module] - seen)
    return tuple(sorted(seen))


@cache
def stage_modules(stage: str, root: Path = REPO_ROOT) -> tuple[str, ...]:
    """Every `lgcd_core` module ``stage`` runs: the transitive import closure of its roots."""
    return _closure(stage_roots(root)[stage], root)


@cache
def cli_modules(root: Path = REPO_ROOT) -> tuple[str, ...]:
    """Every `lgcd_core` module the `lgcd` command runs outside the graph (``lgcd export``, ...), transitively.

    No stage's version covers them: they write no asset.
    """
    path = root / "lgcd_pipeline" / "cli.py"
    known = set(module_files(root))
    return _closure(frozenset(_imported(ast.parse(path.read_text(), filename=str(path)), "", False, known)), root)


def source_hash(stage: str, root: Path = REPO_ROOT) -> str:
    """Hash of the source of every module ``stage`` runs."""
    files = module_files(root)
    digest = hashlib.sha256()
    for module in stage_modules(stage, root):
        digest.update(module.encode())
        digest.update(files[module].read_bytes())
    return digest.hexdigest()[:10]


def _referenced_files_hash(cfg: DatasetConfig, stage: str) -> str:
    """Content of files the YAML points at (prompt templates): editing one is a config change."""
    if stage != stages.PSEUDO_TEXTS.name:
        return ""
    from lgcd_core.language.prompts import template_path

    digest = hashlib.sha256()
    for name, direction in ((cfg.llm.template_a_to_b, "a_to_b"), (cfg.llm.template_b_to_a, "b_to_a")):
        path = template_path(name, direction)
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
    return "-" + digest.hexdigest()[:8]


@cache
def _cached_source_hash(stage: str) -> str:
    return source_hash(stage)


def code_version(cfg: DatasetConfig, stage: str) -> str:
    """`<code hash>-<config hash>`: changes when the stage's code or its YAML section changes.

    For `pseudo_texts` the content of the prompt templates (the default ones included) is part of the
    version too, so editing a template file in place is seen like editing the YAML.
    """
    return f"{_cached_source_hash(stage)}-{cfg.stage_hash(stage)}{_referenced_files_hash(cfg, stage)}"
