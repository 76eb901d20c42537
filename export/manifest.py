"""The artifact manifest: a versioned, documented JSON schema (see README, "Artifacts").

Written atomically (temp file + rename) and read back with validation, so a consumer gets a
clear error for a directory that is not an artifact or comes from a newer edgerun.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from .errors import ExportError

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


def write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, allow_nan=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_manifest(artifact: str | os.PathLike) -> dict:
    """Load and check an artifact's manifest (``artifact`` is the directory or its manifest.json)."""
    p = Path(artifact)
    path = p / MANIFEST_NAME if p.is_dir() else p
    if not path.is_file():
        raise ExportError(f"{artifact} is not an edgerun artifact: no {MANIFEST_NAME} found.", stage="read artifact",
                          hint="Give the directory that `edgerun export` wrote.")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read manifest {path}: {exc}.", stage="read artifact") from exc
    if data.get("schema") != "edgerun.artifact":
        raise ExportError(f"{path} is not an edgerun artifact manifest.", stage="read artifact")
    version = data.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise ExportError(f"manifest {path} has schema version {version}; this edgerun reads up to {SCHEMA_VERSION}.",
                          stage="read artifact", hint="Upgrade edgerun, or re-export with this version.")
    data["path"] = str(path.parent)
    return data
