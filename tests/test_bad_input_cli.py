"""Bad input at the trust boundaries: names and output paths, killed atomic writes, one-line CLI errors.

CLI cases run `lgcd` for real in a subprocess against a temporary datasets folder, data root and
Dagster home; crash cases SIGKILL a child process at each interesting point of an atomic write.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, TINY_YAML, write_dataset_yaml
from pydantic import ValidationError

from lgcd_core.config import ConfigError, DatasetConfig, discover_datasets, load_dataset_config
from lgcd_core.io import atomic_dir, atomic_path, recover
from lgcd_pipeline.stage import cache_dir

SECRET = "sk-live-0123456789abcdef"
EARLIER, NEW, NEXT = b"earlier output", b"new output", b"next output"

Setup = Callable[[Path], None]


# --------------------------------------------------------------------------------------------
# A workspace: datasets folder, data root with an earlier output, Dagster home
# --------------------------------------------------------------------------------------------


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """`datasets/tiny.yaml`, an earlier output under `data/tiny/`, and a Dagster home, all in tmp_path."""
    content = {**TINY_YAML, "source": {**TINY_YAML["source"], "path": str(tmp_path / "raw" / "tiny")}}
    write_dataset_yaml(tmp_path / "datasets", "tiny", content)
    evaluation = tmp_path / "data" / "tiny" / "evaluation"
    evaluation.mkdir(parents=True)
    (evaluation / "report.md").write_bytes(EARLIER)
    (tmp_path / "dagster_home").mkdir()
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", tmp_path / "dagster_home" / "dagster.yaml")
    return tmp_path


def _lgcd(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LGCD_DATASETS_DIR": str(workspace / "datasets"),
           "LGCD_DATA_ROOT": str(workspace / "data"), "DAGSTER_HOME": str(workspace / "dagster_home")}
    return subprocess.run([sys.executable, "-m", "lgcd_pipeline.cli", *args], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=180)


def _files(workspace: Path) -> dict[str, bytes]:
    """Every file outside the Dagster home (which a run may touch), by relative path."""
    return {str(p.relative_to(workspace)): p.read_bytes() for p in sorted(workspace.rglob("*"))
            if p.is_file() and "dagster_home" not in p.parts}


# --------------------------------------------------------------------------------------------
# CLI: one line on stderr, naming the file or the dataset, exit status 2, nothing touched
# --------------------------------------------------------------------------------------------


def _copy_tiny_to(name: str) -> Setup:
    def setup(workspace: Path) -> None:
        shutil.copy(workspace / "datasets" / "tiny.yaml", workspace / "datasets" / name)
    return setup


def _edit_tiny(section: str, values: dict) -> Setup:
    def setup(workspace: Path) -> None:
        path = workspace / "datasets" / "tiny.yaml"
        content = yaml.safe_load(path.read_text())
        content[section] = {**content.get(section, {}), **values}
        path.write_text(yaml.safe_dump(content))
    return setup


def _write_tiny(text: str) -> Setup:
    def setup(workspace: Path) -> None:
        (workspace / "datasets" / "tiny.yaml").write_text(text)
    return setup


def _no_dagster_home(workspace: Path) -> None:
    shutil.rmtree(workspace / "dagster_home")


def _nothing(workspace: Path) -> None:
    """The workspace as is."""


def _garbage(relative: str, content: bytes) -> Setup:
    def setup(workspace: Path) -> None:
        path = workspace / "data" / "tiny" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return setup


# PyYAML quotes the offending line in its errors: here that line holds a secret
BROKEN_YAML = f"source:\n  format: synthetic\n  api_key: {SECRET}: oops\n"
HTTP_LLM = {"backend": "http", "http": {"base_url": "http://localhost:8000/v1", "model": "m", "api_key_env": SECRET}}

CLI_CASES = [
    pytest.param(_copy_tiny_to("...yaml"), ["sync", "--dry-run"], "...yaml", id="name-dots-sync"),
    pytest.param(_copy_tiny_to("my data.yaml"), ["status"], "my data.yaml", id="name-space-status"),
    pytest.param(_copy_tiny_to("Upper.yaml"), ["status"], "Upper.yaml", id="name-upper-status"),
    pytest.param(_copy_tiny_to("a-b.yaml"), ["sync", "--dry-run"], "a-b.yaml", id="name-dash-sync"),
    pytest.param(_edit_tiny("llm", HTTP_LLM), ["status"], "llm.http.api_key_env", id="api-key-env-holds-secret"),
    pytest.param(_write_tiny(BROKEN_YAML), ["sync"], "tiny.yaml", id="broken-yaml-sync"),
    pytest.param(_write_tiny(BROKEN_YAML), ["status"], "tiny.yaml", id="broken-yaml-status"),
    pytest.param(_write_tiny(BROKEN_YAML), ["summary", "--dataset", "tiny"], "tiny.yaml", id="broken-yaml-summary"),
    pytest.param(_write_tiny("- a list\n"), ["status"], "tiny.yaml", id="not-a-mapping-status"),
    pytest.param(_edit_tiny("filter", {"k_cor": 5}), ["sync"], "filter.k_cor", id="unknown-key-sync"),
    pytest.param(_edit_tiny("filter", {"k_cor": 5}), ["status"], "filter.k_cor", id="unknown-key-status"),
    pytest.param(_edit_tiny("filter", {"k_cor": 5}), ["summary", "--dataset", "tiny"], "filter.k_cor",
                 id="unknown-key-summary"),
    pytest.param(_edit_tiny("grounding", {"n_k": "ten"}), ["status"], "grounding.n_k", id="wrong-type-status"),
    pytest.param(_nothing, ["sync", "--dataset", "nope"], "'nope'", id="unknown-dataset-sync"),
    pytest.param(_nothing, ["status", "--dataset", "nope"], "'nope'", id="unknown-dataset-status"),
    pytest.param(_nothing, ["summary", "--dataset", "nope"], "'nope'", id="unknown-dataset-summary"),
    pytest.param(_nothing, ["summary", "--dataset", "../datasets/tiny"], "'../datasets/tiny'",
                 id="dataset-path-traversal-summary"),
    pytest.param(_no_dagster_home, ["status"], "DAGSTER_HOME", id="missing-dagster-home-status"),
    pytest.param(_garbage("evaluation/report.md", b"results \xff\xfe\x80"), ["summary", "--dataset", "tiny"],
                 "report.md: not UTF-8 text", id="non-utf8-report-summary"),
    pytest.param(_garbage("recommendations/recommendations.parquet", b"PAR1 truncated"),
                 ["recommend", "--dataset", "tiny", "--user", "u1"], "recommendations.parquet: not a readable Parquet",
                 id="truncated-parquet-recommend"),
]


@pytest.mark.parametrize(("setup", "args", "named"), CLI_CASES)
def test_cli_reports_bad_input_on_one_line(workspace: Path, setup: Setup, args: list[str], named: str) -> None:
    setup(workspace)
    before = _files(workspace)
    proc = _lgcd(workspace, *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert line.startswith("lgcd: ") and named in line
    assert SECRET not in proc.stderr
    assert _files(workspace) == before


def test_summary_honours_datasets_dir(workspace: Path) -> None:
    proc = _lgcd(workspace, "summary", "--dataset", "tiny")
    assert proc.returncode == 0, proc.stderr
    assert EARLIER.decode() in proc.stdout


# --------------------------------------------------------------------------------------------
# Names and output paths
# --------------------------------------------------------------------------------------------


def _link_out(relative: str) -> Callable[[Path, Path], None]:
    """Make ``<data root>/<relative>`` a symlink to ``outside``."""
    def setup(root: Path, outside: Path) -> None:
        link = root / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(outside, target_is_directory=True)
    return setup


def _tiny(tmp_path: Path) -> DatasetConfig:
    return load_dataset_config(write_dataset_yaml(tmp_path / "datasets", "tiny", TINY_YAML))


PATH_CASES = [
    pytest.param(_link_out("tiny"), lambda cfg: cfg.stage_dir("sequences"), id="dataset-folder-symlinked-out"),
    pytest.param(_link_out("tiny/evaluation"), lambda cfg: cfg.stage_dir("evaluation"), id="stage-folder-symlinked-out"),
    pytest.param(_link_out("tiny/cache"), lambda cfg: cache_dir(cfg, "llm"), id="cache-folder-symlinked-out"),
]


@pytest.mark.parametrize(("setup", "output_path"), PATH_CASES)
def test_output_paths_stay_inside_the_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                setup: Callable[[Path, Path], None],
                                                output_path: Callable[[DatasetConfig], Path]) -> None:
    root, outside = tmp_path / "data", tmp_path / "outside"
    outside.mkdir()
    setup(root, outside)
    monkeypatch.setenv("LGCD_DATA_ROOT", str(root))
    with pytest.raises(ConfigError, match="outside the data root") as err:
        output_path(_tiny(tmp_path))
    assert str(root / "tiny") in str(err.value)
    assert list(outside.iterdir()) == []


def test_symlinked_data_root_is_fine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "disk").mkdir()
    (tmp_path / "data").symlink_to(tmp_path / "disk", target_is_directory=True)
    monkeypatch.setenv("LGCD_DATA_ROOT", str(tmp_path / "data"))
    assert _tiny(tmp_path).stage_dir("sequences") == tmp_path / "data" / "tiny" / "sequences"


def test_name_field_is_checked_without_a_file() -> None:
    with pytest.raises(ValidationError):
        DatasetConfig.model_validate({**TINY_YAML, "name": ".."})


def test_missing_datasets_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing.*does not exist"):
        discover_datasets(tmp_path / "missing")


def test_api_key_env_accepts_a_variable_name(tmp_path: Path) -> None:
    path = write_dataset_yaml(tmp_path, "tiny", {**TINY_YAML, "llm": {**HTTP_LLM, "http": {
        **HTTP_LLM["http"], "api_key_env": "OPENAI_API_KEY"}}})
    assert load_dataset_config(path).llm.http.api_key_env == "OPENAI_API_KEY"


# --------------------------------------------------------------------------------------------
# Crash safety: SIGKILL inside atomic writes
# --------------------------------------------------------------------------------------------

# argv: target, point. Dies at `point`; the rename/removal hooks patch this throwaway process only.
CHILD = """
import os, shutil, signal, sys
from pathlib import Path
from lgcd_core.io import atomic_dir, atomic_path

target, point = Path(sys.argv[1]), sys.argv[2]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def die_on(module, name, suffix):
    real = getattr(module, name)
    def hooked(src, *args, **kwargs):
        if Path(src).name.endswith(suffix):
            die()
        return real(src, *args, **kwargs)
    setattr(module, name, hooked)

if point == "between_renames":
    die_on(os, "replace", ".tmp")  # the second rename: the new folder into place
if point == "before_backup_removed":
    die_on(shutil, "rmtree", ".old")
writer = atomic_path if point == "atomic_path" else atomic_dir
with writer(target) as tmp:
    (tmp if point == "atomic_path" else tmp / "data").write_bytes(b"new output")
    if point in ("atomic_path", "atomic_dir"):
        die()
"""


def _read(target: Path) -> bytes | None:
    path = target if target.suffix else target / "data"
    return path.read_bytes() if path.exists() else None


def _leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name != target.name)


CRASH_CASES = [
    # point, target, what the target holds right after the kill, what the next write finds on entry
    pytest.param("atomic_path", "out.bin", EARLIER, EARLIER, id="kill-inside-atomic-path"),
    pytest.param("atomic_dir", "out", EARLIER, EARLIER, id="kill-inside-atomic-dir"),
    pytest.param("between_renames", "out", None, EARLIER, id="kill-between-the-two-renames"),
    pytest.param("before_backup_removed", "out", NEW, NEW, id="kill-before-backup-removed"),
]


@pytest.mark.parametrize(("point", "name", "after_kill", "seen_next"), CRASH_CASES)
def test_killed_write_loses_nothing_and_leaves_nothing(tmp_path: Path, point: str, name: str,
                                                       after_kill: bytes | None, seen_next: bytes) -> None:
    target = tmp_path / "stage" / name
    writer = atomic_path if target.suffix else atomic_dir
    with writer(target) as tmp:
        (tmp if target.suffix else tmp / "data").write_bytes(EARLIER)
    proc = subprocess.run([sys.executable, "-c", CHILD, str(target), point], cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert _leftovers(target), "the kill should have caught the write half-way"
    assert _read(target) == after_kill
    with writer(target) as tmp:
        assert _read(target) == seen_next  # recovered before the next write starts
        (tmp if target.suffix else tmp / "data").write_bytes(NEXT)
    assert _read(target) == NEXT
    assert _leftovers(target) == []


def test_reader_sees_the_folder_a_kill_swapped_out(workspace: Path) -> None:
    """`lgcd summary` right after a kill between the renames prints the earlier report."""
    evaluation = workspace / "data" / "tiny" / "evaluation"
    subprocess.run([sys.executable, "-c", CHILD, str(evaluation), "between_renames"], cwd=REPO_ROOT, timeout=120)
    assert not evaluation.exists()
    proc = _lgcd(workspace, "summary", "--dataset", "tiny")
    assert proc.returncode == 0, proc.stderr
    assert EARLIER.decode() in proc.stdout
    assert _leftovers(evaluation) == []


def test_leftovers_of_live_processes_are_kept(tmp_path: Path) -> None:
    """A concurrent writer's temporary file is not swept away under it."""
    live = tmp_path / f".out.{os.getpid()}-abc123.tmp"
    live.write_bytes(NEW)
    recover(tmp_path)
    assert live.exists()


def test_debug_shows_the_traceback_and_without_it_one_line(workspace: Path) -> None:
    report = workspace / "data" / "tiny" / "evaluation" / "report.md"
    report.unlink()
    report.mkdir()  # a folder where a file is expected: an OSError no stage anticipates
    quiet = _lgcd(workspace, "summary", "--dataset", "tiny")
    assert quiet.returncode == 2 and len(quiet.stderr.splitlines()) == 1, quiet.stderr
    assert quiet.stderr.startswith(f"lgcd: {report}: ") and "--debug" in quiet.stderr
    loud = _lgcd(workspace, "--debug", "summary", "--dataset", "tiny")
    assert loud.returncode == 1 and "Traceback (most recent call last)" in loud.stderr
