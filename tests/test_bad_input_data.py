"""No silent data damage: each corrupted input is one DataError naming the file and line(s) (or the
stage, domain and setting), and the stage it fails leaves its earlier outputs as they were.

Every case builds a small valid source in tmp_path (LLMCDSR, or Amazon 2014 / 2018 / 2023), corrupts
one thing and runs the data stages in process; the cases marked ``dagster`` also run through the real
Dagster stages, once on the clean source and once on the corrupted one. Harmless differences (a
byte-order mark at the start of a file, a float timestamp without a fractional part) give exactly
the output of the clean source.
"""

from __future__ import annotations

import ast
import codecs
import gzip
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest
from conftest import write_dataset_yaml
from pipeline_helpers import DATA_STAGES, materialize
from test_data_amazon import write_lines
from test_data_llmcdsr import write_fixture

from lgcd_core.config import DatasetConfig
from lgcd_core.data.kcore import apply_filters
from lgcd_core.data.readers import read_interactions, read_items
from lgcd_core.data.sequences import build_sequences, require_every_domain
from lgcd_core.io import DataError

NAME = "bad"
DELETE = object()  # patch value: remove the field
# Amazon fixture files: plain and gzip; 2014 metadata is Python literals.
FILES = {"A": {"reviews": "ra.json", "meta": "ma.json"}, "B": {"reviews": "rb.json.gz", "meta": "mb.json.gz"}}
SPLIT = {"seed": 0, "valid_ratio": 0.25, "test_ratio": 0.25}


# ---- clean sources -----------------------------------------------------------------------------


def review_record(version: str, user: str, item: str, t: int) -> dict:
    if version == "2023":
        return {"user_id": user, "asin": f"v{item}", "parent_asin": item, "timestamp": t * 1000, "rating": 5.0}
    return {"reviewerID": user, "asin": item, "unixReviewTime": t, "overall": 5.0}


def meta_line(version: str, item: str, domain: str) -> str:
    title, brand, cats = f"{domain} thing {item}", f"Brand {item[-1]}", [domain, f"Shelf {item[-1]}"]
    if version == "2014":
        return repr({"asin": item, "title": title, "brand": brand, "categories": [cats], "price": 1.5})
    if version == "2018":
        return json.dumps({"asin": item, "title": title, "brand": brand, "category": cats})
    return json.dumps({"parent_asin": item, "title": title, "store": brand, "categories": cats})


def review_rows(domain: str, a_last: bool = False) -> list[tuple[str, str, int]]:
    """(user, item, time) of one domain: 12 overlap users (half end on A, half on B), 2 single-domain."""
    rows = []
    for u in range(12):
        ends_on_a = a_last or u % 2 == 1
        for k in range(2):
            first = (domain == "A") != ends_on_a  # this domain's item comes first in each A/B pair
            rows.append((f"o{u}", f"{domain.lower()}{(u + k) % 4 + 1}", 1_400_000_000 + 100 * u + 10 * k + (not first)))
    return rows + [(f"s{domain}", f"{domain.lower()}{i}", 1_300_000_000 + i) for i in (1, 2)]


def write_reviews(folder: Path, version: str, domain: str, a_last: bool = False) -> None:
    lines = [json.dumps(review_record(version, *row)) for row in review_rows(domain, a_last)]
    write_lines(folder / FILES[domain]["reviews"], lines)


def amazon_source(folder: Path, version: str) -> Path:
    """Reviews (26 lines per domain) and metadata (items 1..4 per domain) in ``version``'s layout."""
    folder.mkdir(parents=True, exist_ok=True)
    for domain in ("A", "B"):
        write_reviews(folder, version, domain)
        items = [f"{domain.lower()}{i}" for i in range(1, 5)]
        write_lines(folder / FILES[domain]["meta"], [meta_line(version, item, domain) for item in items])
    return folder


def dataset(source: str, folder: Path, settings: dict) -> dict:
    """The dataset YAML content of a fixture source, ``settings`` merged in (one level deep)."""
    if source == "llmcdsr":
        content = {"source": {"format": "llmcdsr", "path": str(folder)}, "filter": {"k_core": None}}
    else:
        content = {
            "source": {"format": "amazon", "path": str(folder), "amazon_version": int(source), "files": FILES},
            "filter": {"k_core": None},
            "split": SPLIT,
        }
    for key, value in settings.items():
        content[key] = {**content.get(key, {}), **value}
    return {**content, "domains": {"A": "Food", "B": "Kitchen"}}


def build_source(source: str, folder: Path) -> Path:
    return write_fixture(folder) if source == "llmcdsr" else amazon_source(folder, source)


# ---- corruptions -------------------------------------------------------------------------------


def read_raw(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def write_raw(path: Path, data: bytes) -> None:
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def patch(name: str, line: int, key: str, value: object) -> Callable[[Path], None]:
    """Set (or delete) ``key`` of line ``line`` of a JSON-lines or Python-literal file.

    ``value`` may be a function of the old value.
    """

    def corrupt(folder: Path) -> None:
        path = folder / name
        lines = read_raw(path).decode().splitlines()
        literal = not lines[line - 1].lstrip().startswith('{"')
        record = ast.literal_eval(lines[line - 1]) if literal else json.loads(lines[line - 1])
        if value is DELETE:
            del record[key]
        else:
            record[key] = value(record[key]) if callable(value) else value
        lines[line - 1] = repr(record) if literal else json.dumps(record)
        write_raw(path, "".join(f"{text}\n" for text in lines).encode())

    return corrupt


def replace_bytes(name: str, old: bytes, new: bytes) -> Callable[[Path], None]:
    """Replace every occurrence of ``old`` in the (decompressed) file."""

    def corrupt(folder: Path) -> None:
        data = read_raw(folder / name)
        assert old in data
        write_raw(folder / name, data.replace(old, new))

    return corrupt


def append(name: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text((folder / name).read_text() + text)


def rewrite(name: str, text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).write_text(text)


def as_version(version: str) -> Callable[[Path], None]:
    """Overwrite the source with another version's files (same file names)."""
    return lambda folder: amazon_source(folder, version)


def a_items_last(folder: Path) -> None:
    """(2018 source) Every overlap user's last item is a domain-A item: no case can have a domain-B target."""
    for domain in ("A", "B"):
        write_reviews(folder, "2018", domain, a_last=True)


def delete(name: str) -> Callable[[Path], None]:
    return lambda folder: (folder / name).unlink()


def only_a_in_overlap(folder: Path) -> None:
    (folder / "train_B.txt").unlink()
    (folder / "train_overlap.txt").write_text("1\t0,1,2\n")


# ---- the table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    source: str  # 'llmcdsr' or an Amazon version
    corrupt: Callable[[Path], None]
    expect: tuple[str, ...]  # what the message must name: 'file:line' (no digit may follow), stage, domain...
    stage: str = "raw_interactions"  # the stage that fails
    settings: dict = field(default_factory=dict)
    dagster: bool = False  # also run through the Dagster stages


CASES = [
    # the same user twice in one LLMCDSR file
    pytest.param(Case("llmcdsr", append("train_A.txt", "1\t0,2\n"), ("train_A.txt:3", "line 1"), dagster=True),
                 id="llmcdsr-train_A-user-twice"),
    pytest.param(Case("llmcdsr", append("train_overlap.txt", "1\t3,0\n"), ("train_overlap.txt:2", "line 1")),
                 id="llmcdsr-train_overlap-user-twice"),
    pytest.param(Case("llmcdsr", rewrite("train_A.txt", "1\t0,1,2\n2\t2,0_1\n"), ("train_A.txt:2", "expected")),
                 id="llmcdsr-id-with-underscore"),
    pytest.param(Case("llmcdsr", append("valid.txt", "2\t0,4\n"), ("valid.txt:3", "line 2"), dagster=True),
                 id="llmcdsr-valid-user-twice"),
    pytest.param(Case("llmcdsr", rewrite("test.txt", "5\t0,3\n\n5\t1,4\n"), ("test.txt:3", "line 1")),
                 id="llmcdsr-test-user-twice"),
    # a domain or an evaluation target domain left empty
    pytest.param(Case("llmcdsr", only_a_in_overlap, ("raw_interactions", "domain B", "no training interactions")),
                 id="llmcdsr-no-B-training-lines"),
    pytest.param(Case("llmcdsr", rewrite("valid.txt", "1\t0,3,1\n2\t3,4,2\n"),
                      ("sequences", "valid", "domain-B target", "valid lines"), stage="sequences", dagster=True),
                 id="llmcdsr-no-valid-B-target"),
    pytest.param(Case("llmcdsr", delete("valid.txt"), ("sequences", "no evaluation cases"), stage="sequences"),
                 id="llmcdsr-no-eval-file"),
    pytest.param(Case("2018", rewrite("mb.json.gz", ""), ("mb.json.gz", "no metadata found"),
                      settings={"source": {"missing_metadata": "drop"}}),
                 id="2018-drop-with-empty-metadata"),
    pytest.param(Case("2018", replace_bytes("mb.json.gz", b'"asin": "b', b'"asin": "x'),
                      ("rb.json.gz:1", "mb.json.gz", "missing_metadata: drop", "domain B"),
                      settings={"source": {"missing_metadata": "drop"}}, dagster=True),
                 id="2018-drop-removes-every-review"),
    pytest.param(Case("2018", a_items_last, ("sequences", "domain-B target", "split.valid_ratio"), stage="sequences",
                      dagster=True),
                 id="2018-no-valid-B-target"),
    # timestamps
    pytest.param(Case("2014", patch("ra.json", 3, "unixReviewTime", -5), ("ra.json:3", "negative"), dagster=True),
                 id="2014-negative-time"),
    pytest.param(Case("2014", patch("rb.json.gz", 2, "unixReviewTime", None), ("rb.json.gz:2", "missing or null")),
                 id="2014-null-time"),
    pytest.param(Case("2018", patch("ra.json", 4, "unixReviewTime", 1_400_000_000.5), ("ra.json:4", "fractional")),
                 id="2018-fractional-time"),
    pytest.param(Case("2018", patch("rb.json.gz", 5, "unixReviewTime", "1400000000"), ("rb.json.gz:5", "not a number")),
                 id="2018-string-time"),
    pytest.param(Case("2018", patch("rb.json.gz", 9, "unixReviewTime", 1_400_000_000_000), ("rb.json.gz:9", "year 5000")),
                 id="2018-millisecond-time"),
    pytest.param(Case("2023", patch("ra.json", 2, "timestamp", DELETE), ("ra.json:2", "'timestamp' missing")),
                 id="2023-missing-time"),
    pytest.param(Case("2023", patch("ra.json", 6, "timestamp", 1.4e12 + 0.25), ("ra.json:6", "fractional")),
                 id="2023-fractional-ms-time"),
    # metadata values of the wrong type
    pytest.param(Case("2014", patch("ma.json", 2, "title", b"Tea"), ("ma.json:2", "'title' is a bytes"), dagster=True),
                 id="2014-literal-title-bytes"),
    pytest.param(Case("2014", patch("mb.json.gz", 3, "brand", {"Acme"}), ("mb.json.gz:3", "'brand' is a set")),
                 id="2014-literal-brand-set"),
    pytest.param(Case("2014", patch("ma.json", 4, "categories", {"Food": 1}), ("ma.json:4", "list of lists")),
                 id="2014-literal-categories-dict"),
    pytest.param(Case("2014", patch("ma.json", 1, "categories", [[["Food"]]]), ("ma.json:1", "list of lists")),
                 id="2014-literal-categories-too-deep"),
    pytest.param(Case("2018", patch("ma.json", 2, "category", "Food"), ("ma.json:2", "'category' must be a list")),
                 id="2018-category-string"),
    pytest.param(Case("2023", patch("mb.json.gz", 1, "title", {"en": "Pan"}), ("mb.json.gz:1", "'title' must be a string")),
                 id="2023-title-object"),
    # files of another version than the declared one
    pytest.param(Case("2014", as_version("2018"), ("ma.json", "line 1", "'categories'", "Amazon 2018 metadata")),
                 id="2018-files-declared-2014"),
    pytest.param(Case("2014", as_version("2023"), ("ra.json", "line 1", "Amazon 2023 reviews"), dagster=True),
                 id="2023-files-declared-2014"),
    pytest.param(Case("2018", as_version("2014"), ("ma.json:1", "Python literal", "2014")),
                 id="2014-files-declared-2018"),
    pytest.param(Case("2023", as_version("2018"), ("ra.json", "line 1", "Amazon 2014 or 2018 reviews")),
                 id="2018-files-declared-2023"),
    # undecodable bytes and byte-order marks
    pytest.param(Case("llmcdsr", replace_bytes("train_B.txt", b"7\t", b"7\t\xff"), ("train_B.txt:1", "UTF-8"),
                      dagster=True),
                 id="llmcdsr-invalid-utf8"),
    pytest.param(Case("llmcdsr", replace_bytes("train_A.txt", b"\n2\t", b"\n\xef\xbb\xbf2\t"),
                      ("train_A.txt:2", "byte-order mark")),
                 id="llmcdsr-bom-inside-file"),
    pytest.param(Case("2014", replace_bytes("mb.json.gz", b"B thing b2", b"B \xe9 b2"), ("mb.json.gz:2", "UTF-8")),
                 id="2014-literal-gz-invalid-utf8"),
    pytest.param(Case("2018", replace_bytes("rb.json.gz", b'{"reviewerID": "o3"', b'{"reviewerID": "o3\xc3"'),
                      ("rb.json.gz:7", "UTF-8")),
                 id="2018-gz-invalid-utf8"),
    pytest.param(Case("2023", replace_bytes("ra.json", b'\n{"user_id": "o1"', b'\n\xef\xbb\xbf{"user_id": "o1"'),
                      ("ra.json:3", "malformed JSON", "BOM")),
                 id="2023-bom-inside-file"),
]  # fmt: skip


def run_data_stages(cfg: DatasetConfig) -> tuple[str, DataError] | None:
    """Run the data stages in process; the first stage raising a DataError and the error (None if none)."""
    out: dict = {}
    steps = {
        "raw_interactions": lambda: out.update(raw=read_interactions(cfg)),
        "raw_items": lambda: out.update(items=read_items(cfg, out["raw"])),
        "filtered_interactions": lambda: out.update(filtered=apply_filters(out["raw"], out["items"], cfg.filter)),
        "sequences": lambda: require_every_domain(
            build_sequences(out["filtered"], out["items"], cfg.split), out["filtered"], cfg.split
        ),
    }
    for stage, step in steps.items():
        try:
            step()
        except DataError as exc:
            return stage, exc
    return None


def assert_names(message: str, expect: tuple[str, ...]) -> None:
    for part in expect:
        assert re.search(re.escape(part) + r"(?!\d)", message), f"{part!r} not in {message!r}"


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_error(case: Case, tmp_path: Path) -> None:
    folder = build_source(case.source, tmp_path / "raw")
    cfg = DatasetConfig.model_validate({"name": NAME, **dataset(case.source, folder, case.settings)})
    assert run_data_stages(cfg) is None, "the clean fixture must pass"
    case.corrupt(folder)
    failed = run_data_stages(cfg)
    assert failed is not None, "the corrupted input was accepted"
    stage, error = failed
    assert stage == case.stage, error
    assert_names(str(error), case.expect)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def failure_of(result: dg.ExecuteInProcessResult) -> tuple[str, str, str]:
    """(step key, error class, message) of the run's failed step."""
    event = next(e for e in result.all_events if e.is_step_failure)
    error = event.step_failure_data.error
    cause = error.cause or error
    return event.step_key, cause.cls_name, cause.message


@pytest.mark.parametrize("case", [p for p in CASES if p.values[0].dagster])
def test_failed_stage_keeps_earlier_outputs(case: Case, tiny_env: Path) -> None:
    folder = build_source(case.source, tiny_env / "raw" / NAME)
    write_dataset_yaml(tiny_env / "datasets", NAME, dataset(case.source, folder, case.settings))
    assert materialize(DATA_STAGES, dg.DagsterInstance.ephemeral(), dataset=NAME).success
    data_root = tiny_env / "data"
    stage_dir = data_root / NAME / case.stage
    before = snapshot(stage_dir)
    assert before, f"{stage_dir} was not written by the clean run"

    case.corrupt(folder)
    result = materialize(DATA_STAGES, dg.DagsterInstance.ephemeral(), dataset=NAME, raise_on_error=False)
    assert not result.success
    step, cls, message = failure_of(result)
    assert (step, cls) == (f"{NAME}__{case.stage}", "DataError"), message
    assert_names(message, case.expect)
    assert snapshot(stage_dir) == before
    assert not list(data_root.rglob(".*")), "temporary files left behind"


# ---- harmless differences ----------------------------------------------------------------------


def prepend_bom(name: str) -> Callable[[Path], None]:
    return lambda folder: write_raw(folder / name, codecs.BOM_UTF8 + read_raw(folder / name))


HARMLESS = [
    pytest.param("llmcdsr", prepend_bom("train_A.txt"), id="llmcdsr-bom-train_A"),
    pytest.param("llmcdsr", prepend_bom("num.txt"), id="llmcdsr-bom-num"),
    pytest.param("llmcdsr", prepend_bom("valid.txt"), id="llmcdsr-bom-valid"),
    pytest.param("2014", prepend_bom("ma.json"), id="2014-bom-literal-meta"),
    pytest.param("2014", prepend_bom("mb.json.gz"), id="2014-bom-literal-meta-gz"),
    pytest.param("2018", prepend_bom("rb.json.gz"), id="2018-bom-reviews-gz"),
    pytest.param("2023", prepend_bom("ma.json"), id="2023-bom-meta"),
    pytest.param("2018", patch("ra.json", 2, "unixReviewTime", float), id="2018-whole-float-time"),
    pytest.param("2023", patch("rb.json.gz", 3, "timestamp", float), id="2023-whole-float-ms-time"),
]


def read_tables(cfg: DatasetConfig) -> tuple[pa.Table, pa.Table]:
    raw = read_interactions(cfg)
    return raw, read_items(cfg, raw)


@pytest.mark.parametrize(("source", "change"), HARMLESS)
def test_harmless_difference_gives_the_clean_output(source: str, change: Callable[[Path], None], tmp_path: Path) -> None:
    folder = build_source(source, tmp_path / "raw")
    cfg = DatasetConfig.model_validate({"name": NAME, **dataset(source, folder, {})})
    clean = read_tables(cfg)
    change(folder)
    changed = read_tables(cfg)
    for before, after in zip(clean, changed):
        assert after.equals(before, check_metadata=True)
    assert not any("\ufeff" in str(v) for v in changed[0]["user_id"].to_pylist() + changed[1]["item_id"].to_pylist())


def test_bom_prefixed_train_file_gives_byte_identical_stage_outputs(tiny_env: Path) -> None:
    folder = write_fixture(tiny_env / "raw" / NAME)
    write_dataset_yaml(tiny_env / "datasets", NAME, dataset("llmcdsr", folder, {}))
    assert materialize(DATA_STAGES, dg.DagsterInstance.ephemeral(), dataset=NAME).success
    before = snapshot(tiny_env / "data" / NAME)
    prepend_bom("train_A.txt")(folder)
    assert materialize(DATA_STAGES, dg.DagsterInstance.ephemeral(), dataset=NAME).success
    assert snapshot(tiny_env / "data" / NAME) == before


def test_same_uid_in_different_llmcdsr_files_is_two_users(tmp_path: Path) -> None:
    """LLMCDSR numbers users per file: uid 1 of train_A, train_overlap and valid are three users."""
    folder = write_fixture(tmp_path / "raw")
    cfg = DatasetConfig.model_validate({"name": NAME, **dataset("llmcdsr", folder, {})})
    users = set(read_interactions(cfg)["user_id"].to_pylist())
    assert {"train_A:1", "train_overlap:1", "valid:1"} <= users
