"""Load a pickle that may only hold a flat ``dict`` of ``str``/``int`` keys and values.

Pickles can run arbitrary code when loaded (``__reduce__`` -> ``find_class`` -> call). The
LLMCDSR item dictionaries are plain ``{str: int}`` / ``{str: str}`` maps, so we accept exactly
that: the opcode stream is checked against a whitelist *before* anything is built (nothing is
imported or called), the unpickler refuses every ``find_class``/persistent id, and the result
is checked to be a dict of str/int.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from pathlib import Path

from lgcd_core.io import DataError

# Opcodes that build dicts, str and int (all protocols), plus framing and memo bookkeeping.
ALLOWED_OPCODES = frozenset(
    {
        "PROTO", "FRAME", "STOP", "MARK",
        "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS",
        "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4",
        "UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8",
        "PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE", "GET", "BINGET", "LONG_BINGET",
    }
)  # fmt: skip


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Second line of defence: never resolve a class or function, never load a persistent id."""

    def find_class(self, module: str, name: str) -> object:
        raise pickle.UnpicklingError(f"refused to load global {module}.{name}")

    def persistent_load(self, pid: object) -> object:
        raise pickle.UnpicklingError("refused to load a persistent id")


def load_str_dict(path: Path) -> dict[str, int | str]:
    """Load ``path`` as a dict whose keys and values are str or int; DataError otherwise."""
    data = path.read_bytes()
    try:
        for opcode, _arg, pos in pickletools.genops(data):
            if opcode.name not in ALLOWED_OPCODES:
                raise DataError(
                    f"{path}: refused pickle opcode {opcode.name} at byte {pos}; "
                    "only a dict of str/int is accepted (no classes, functions or other types)"
                )
        obj = _NoGlobalsUnpickler(io.BytesIO(data)).load()
    except DataError:
        raise
    except Exception as exc:  # malformed or truncated stream
        raise DataError(f"{path}: not a readable pickle of a dict of str/int: {exc}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    for key, value in obj.items():
        if not isinstance(key, (str, int)) or not isinstance(value, (str, int)):
            raise DataError(
                f"{path}: expected str/int keys and values, got {type(key).__name__} -> "
                f"{type(value).__name__} for key {key!r}"
            )
    return obj
