"""Writing a report's files: the output directory, JSON, and one clear error when it cannot be written."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from rllmtop.errors import UserError

__all__ = ["prepare_out", "write_json", "writing"]


def prepare_out(out_dir: Path) -> Path:
    """Create ``out_dir`` if needed and check that files can be written there (UserError naming it)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"report output {out} exists and is not a directory", "pass --out DIR (a directory)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".rllmtop-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(
            f"cannot write the report into {out}: {e.strerror or e}",
            "pass --out DIR with a directory you can write to",
        ) from e
    return out


@contextmanager
def writing(out_dir: Path) -> Iterator[None]:
    """Turn a failed write (disk full, permissions changed mid-way) into one UserError naming the place."""
    try:
        yield
    except OSError as e:
        where = e.filename if getattr(e, "filename", None) else out_dir
        raise UserError(
            f"cannot write the report file {where}: {e.strerror or e}",
            f"free space or fix permissions in {out_dir}, then run it again",
        ) from e


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(_json_safe(obj), indent=2, allow_nan=False) + "\n", encoding="utf-8")
