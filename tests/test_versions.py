"""Code versions follow the code: a stage's version covers exactly the lgcd_core modules it imports."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lgcd_pipeline import versions

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """The parts of the repository a code version reads, copied so that tests may edit them."""
    for part in ("lgcd_core", "lgcd_pipeline"):
        shutil.copytree(REPO_ROOT / part, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _hashes(root: Path) -> dict[str, str]:
    return {stage: versions.source_hash(stage, root) for stage in versions.STAGES}


def test_every_stage_has_an_entry_and_every_module_a_stage() -> None:
    roots = versions.stage_roots()
    assert set(roots) == set(versions.STAGES)
    used = {m for stage in versions.STAGES for m in versions.stage_modules(stage)}
    unused = set(versions.module_files()) - used - set(versions.cli_modules())  # `lgcd export` writes no asset
    assert not unused, f"modules no stage and no `lgcd` command imports (dead code?): {sorted(unused)}"
    assert "lgcd_core.serving.exported" in versions.cli_modules()
    assert "lgcd_core.serving.exported" not in versions.stage_modules("recommendations")


@pytest.mark.parametrize(("module", "stage"), [
    ("lgcd_core.evaluation.report", "evaluation"),
    ("lgcd_core.language.generation_cache", "pseudo_texts"),
    ("lgcd_core.model.scoring", "evaluation"),
    ("lgcd_core.language.prompts", "pseudo_texts"),
    ("lgcd_core.data.safe_pickle", "raw_items"),
])
def test_modules_missed_by_the_old_hand_kept_lists_are_covered(module: str, stage: str) -> None:
    assert module in versions.stage_modules(stage)


def test_editing_each_module_makes_exactly_its_importers_stale(repo_copy: Path) -> None:
    before = _hashes(repo_copy)
    for module, path in versions.module_files(repo_copy).items():
        original = path.read_text()
        path.write_text(original + "\n# an edit\n")
        changed = {s for s, h in _hashes(repo_copy).items() if h != before[s]}
        path.write_text(original)
        importers = {s for s in versions.STAGES if module in versions.stage_modules(s, repo_copy)}
        assert changed == importers, module
    assert _hashes(repo_copy) == before


def test_a_new_import_inside_a_function_is_followed(repo_copy: Path) -> None:
    """The graph is read from the source: a module imported lazily by the parser joins pseudo_texts only."""
    (repo_copy / "lgcd_core" / "language" / "answer_cleanup.py").write_text("def clean(text):\n    return text\n")
    parsing = repo_copy / "lgcd_core" / "language" / "parsing.py"
    parsing.write_text(parsing.read_text() + "\n\ndef _late():\n    from .answer_cleanup import clean\n    return clean\n")
    module = "lgcd_core.language.answer_cleanup"
    stages = {s for s in versions.STAGES if module in versions.stage_modules(s, repo_copy)}
    assert "pseudo_texts" in stages
    assert not stages & {"raw_interactions", "sequences", "item_text_embeddings", "pretrained_encoders"}


def test_static_closure_contains_every_module_a_stage_loads_at_run_time() -> None:
    """Importing a stage's entry modules in a fresh interpreter loads nothing the static graph missed."""
    for stage in versions.STAGES:
        script = (
            "import importlib, json, sys\n"
            f"for m in {sorted(versions.stage_roots()[stage])!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'lgcd_core')))\n"
        )
        out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, cwd=REPO_ROOT)
        assert set(json.loads(out.stdout)) <= set(versions.stage_modules(stage)), stage
