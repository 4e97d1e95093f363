"""Atomic file output: every stage writes to a temporary sibling and renames it into place.

A stage that fails half-way leaves the previous output (or nothing) behind, never a partial file.
Temporary siblings are named ``.<name>.<pid>-<random>.tmp`` (and a folder's swapped-out previous
version ``.<name>.<pid>-<random>.old``), so even a process killed with SIGKILL leaves nothing for
long: the next atomic write into the same folder, or :func:`recover`, removes the leftovers of dead
processes and puts back a previous folder that a kill caught between the two renames of a swap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


class DataError(ValueError):
    """Bad input data: the message names the file, line or field and what was expected."""


# tempfile's random part is drawn from lowercase letters, digits and "_"
_LEFTOVER = re.compile(r"\.(?P<target>.+)\.(?P<pid>\d+)-[a-z0-9_]+\.(?P<kind>tmp|old)")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (PermissionError: it does, as another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def recover(folder: Path) -> None:
    """Clean up after atomic writes into ``folder`` whose process died (leftovers of live ones are kept).

    A previous version swapped out by :func:`atomic_dir` is renamed back when its target is missing
    (the process was killed between the two renames); every other leftover is removed.
    """
    if not folder.is_dir():
        return
    for entry in sorted(folder.iterdir()):
        match = _LEFTOVER.fullmatch(entry.name)
        if match is None or _alive(int(match["pid"])):
            continue
        target = folder / match["target"]
        if match["kind"] == "old" and not os.path.lexists(target):
            os.replace(entry, target)
        else:
            _remove(entry)


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; outputs are ordinary readable files
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; it replaces ``path`` as a whole only on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), suffix=".tmp", dir=path.parent))
    backup = tmp.with_suffix(".old")
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if os.path.lexists(path):
            os.replace(path, backup)
        os.replace(tmp, path)  # a kill before this line leaves the previous folder as `backup`: see recover
        shutil.rmtree(backup, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_parquet(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_parquet(path: Path, columns: list[str] | None = None, filters=None) -> pa.Table:
    """A Parquet file as a table; DataError naming the file when it is truncated or not Parquet."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; materialize the stage that writes it first")
    try:
        return pq.read_table(path, columns=columns, filters=filters)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({' '.join(str(exc).split())[:200]}); "
                        "re-materialize the stage that writes it") from None


def write_json(obj: object, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))


def write_npy(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def printable(text: str) -> str:
    """``text`` as one line of printable characters: whitespace runs become one space; control and format
    characters (NUL, ESC, BEL, right-to-left overrides, ...) are dropped."""
    return "".join(ch for ch in " ".join(text.split()) if ch.isprintable())


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_manifest(folder: Path) -> dict[str, list]:
    """``{relative path: [size, sha256]}`` of every file under ``folder`` (what a stage wrote), {} if it is absent."""
    if not folder.is_dir():
        return {}
    return {str(path.relative_to(folder)): [path.stat().st_size, sha256_file(path)]
            for path in sorted(p for p in folder.rglob("*") if p.is_file())}


def save_figure(fig, path: Path) -> Path:
    """Lay out a matplotlib figure, write it to ``path`` as PNG (atomically) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path


def manifest_changes(folder: Path, recorded: dict[str, list]) -> list[str]:
    """What differs between ``folder`` now and the manifest recorded when it was written, in words ([] if nothing).

    Sizes are compared first, so a missing or resized file costs no hashing.
    """
    if not folder.is_dir():
        return [f"{folder} is missing"]
    changes = []
    for rel, (size, _sha) in recorded.items():
        path = folder / rel
        if not path.is_file():
            changes.append(f"{path} is missing")
        elif path.stat().st_size != size:
            changes.append(f"{path} changed since it was written")
    if changes:
        return changes
    now = folder_manifest(folder)
    return [f"{folder / rel} changed since it was written" for rel, entry in recorded.items() if now.get(rel) != entry]
