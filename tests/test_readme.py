"""The README is checked as a document: every command in it parses against the tool it calls, every
selection selects what it says, every linked file exists, and its YAML snippets validate."""

from __future__ import annotations

import importlib
import re
import shlex

import pytest
import yaml
from conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w*)\n(.*?)```", README, flags=re.S)
COMMANDS = [line.split("  #")[0].strip() for lang, body in BLOCKS if lang == "bash"
            for line in body.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_readme_has_commands_and_no_reference_to_a_missing_file():
    assert len(COMMANDS) >= 8
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith("http"):
            assert (REPO_ROOT / target).exists(), target
    assert "DESIGN.md" not in README
    cited = [p for p in re.findall(r"`([\w./-]+/[\w.-]+\.\w+)`", README) if "<" not in p]  # file paths in backticks
    assert cited and all((REPO_ROOT / p).exists() for p in cited), [p for p in cited if not (REPO_ROOT / p).exists()]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_readme_command_parses(command, monkeypatch):
    from lgcd_pipeline.cli import build_parser

    words = [w for w in shlex.split(command) if "=" not in w or w.startswith("-")]  # drop VAR=value prefixes
    tool, args = words[0], words[1:]
    if tool.endswith("/lgcd"):
        build_parser().parse_args(args)  # raises SystemExit on an unknown command or flag
    elif tool == "make":
        targets = re.findall(r"(?m)^([a-z][a-z-]*):", (REPO_ROOT / "Makefile").read_text())
        assert all(a in targets for a in args), args
    elif tool.endswith("/dagster"):
        from dagster._core.selector.subset_selector import parse_asset_selection

        from lgcd_core.config import discover_datasets
        from lgcd_pipeline.definitions import build_definitions

        assert args[:2] == ["asset", "materialize"] and "-m" in args and args[args.index("-m") + 1] == "lgcd_pipeline.definitions"
        selection = args[args.index("--select") + 1].split(",")
        defs = build_definitions(discover_datasets(REPO_ROOT / "datasets"))
        keys = {k.to_user_string() for k in parse_asset_selection(list(defs.assets), selection)}
        for clause in selection:
            target = clause.strip("*")
            assert target in keys
            if clause.startswith("*"):  # upstream included: the first stage of that dataset
                assert f"{target.split('/')[0]}/raw_interactions" in keys
    elif tool.endswith("python") and args[:1] == ["-m"]:
        monkeypatch.syspath_prepend(str(REPO_ROOT))  # `python -m bench.x` runs from the repository root
        assert hasattr(importlib.import_module(args[1]), "main")
    else:
        assert tool in ("mkdir", "ln", "export"), command


def test_the_readme_yaml_snippets_validate():
    from lgcd_core.config import DatasetConfig

    snippets = [yaml.safe_load(body) for lang, body in BLOCKS if lang == "yaml"]
    own_data = next(s for s in snippets if s.get("source", {}).get("format") == "interactions")
    DatasetConfig.model_validate({"name": "mine", **own_data})


def test_the_readme_csv_example_reads(tmp_path):
    """The two side-by-side files of "A plain interactions file and an items file" are what the reader accepts."""
    from lgcd_core.data import interactions

    body = next(body for lang, body in BLOCKS if lang == "text" and "interactions.csv" in body)
    lines = body.splitlines()
    cut = lines[0].index("items.csv")
    for column, name in ((slice(0, cut), "interactions.csv"), (slice(cut, None), "items.csv")):
        rows = [line[column].strip() for line in lines[1:] if line[column].strip()]
        (tmp_path / name).write_text("\n".join(rows) + "\n")
    table, _ = interactions.read_interactions(tmp_path, {"A": "Books", "B": "Movies"})
    assert table.num_rows == 3 and table.column("domain").to_pylist() == ["A", "B", "A"]
