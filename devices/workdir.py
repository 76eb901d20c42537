"""The device's work directory: which paths are acceptable, and the sh that makes one safe to use.

* A ``work_dir`` is an absolute, normalised path: no ``.``/``..`` component (``/x/wd/..`` is
  ``/x``, and ``cleanup`` must never remove that), and no ``;`` or ``:`` (the runner is started
  with ``--library-path`` lists that these separate).
* edgerun creates a work directory mode 0700 with a marker file inside (:data:`MARKER`);
  ``cleanup`` removes only a directory that has the marker.
* Before files are trusted from it, the directory must be owned by the device's user and not
  writable by group or others (:func:`verify_script`): a shared ``/tmp/edgerun`` lets anyone
  plant a "blob" that the next deploy would run.
"""

from __future__ import annotations

import posixpath
import shlex

MARKER = ".edgerun-work-dir"
WORKDIR_RC = 96  # the status verify_script exits with; stderr says why (``@@workdir REASON``)
REASONS = {
    "cannot-create": "cannot be created",
    "not-a-directory": "is not a directory",
    "not-owned": "is not owned by the device's user",
    "writable-by-others": "is writable by group or others (anyone could replace the files edgerun runs)",
}


def check_work_dir(path: str) -> str:
    """``path`` if it is acceptable as a work directory (trailing ``/`` dropped); else ``ValueError``."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"work_dir must be an absolute path on the device, got {path!r}")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"work_dir {path!r} contains '.' or '..'; give the normalised path "
                         f"({posixpath.normpath(path)!r} if that is what you mean)")
    bad = sorted({c for c in path if c in ";:" or ord(c) < 32 or ord(c) == 127})
    if bad:
        raise ValueError(f"work_dir {path!r} contains {' '.join(repr(c) for c in bad)}: ';' and ':' separate the "
                         "runner's library path, and control characters have no place in a path; choose another "
                         "directory")
    if not parts:
        raise ValueError("work_dir must not be the root directory")
    return "/" + "/".join(parts)


def removable(work_dir: str) -> bool:
    """Whether ``cleanup`` may even consider ``work_dir``: normalised, and not ``/``, ``/tmp`` or ``/home``.

    The marker file inside is checked too (by the device, at removal time).
    """
    try:
        wd = check_work_dir(work_dir)
    except ValueError:
        return False
    return wd.count("/") >= 2


def create_script(work_dir: str) -> str:
    """sh: create ``work_dir`` (0700, with the marker) if it does not exist. Never fails."""
    wd = shlex.quote(work_dir)
    parent = shlex.quote(posixpath.dirname(work_dir) or "/")
    return (f"if [ ! -e {wd} ]; then mkdir -p {parent} 2>/dev/null; "
            f"mkdir -m 700 {wd} 2>/dev/null && : > {wd}/{MARKER}; fi")


def verify_script(work_dir: str) -> str:
    """sh: :func:`create_script`, then exit :data:`WORKDIR_RC` unless the directory is private."""
    wd = shlex.quote(work_dir)
    fail = "{ echo '@@workdir %s' >&2; exit " + str(WORKDIR_RC) + "; }"
    return (create_script(work_dir) + "; "
            f"[ -e {wd} ] || {fail % 'cannot-create'}; "
            f"[ -d {wd} ] || {fail % 'not-a-directory'}; "
            f"[ -O {wd} ] || {fail % 'not-owned'}; "
            f"case \"$(ls -ldL -- {wd})\" in ?????w*|????????w*) {fail % 'writable-by-others'};; esac")


def cleanup_script(work_dir: str) -> str:
    """sh: remove ``work_dir`` if (and only if) edgerun's marker is in it; exit 3 otherwise."""
    wd = shlex.quote(work_dir)
    return f"if [ -f {wd}/{MARKER} ]; then rm -rf -- {wd}; else exit 3; fi"


def reason(stderr: str) -> str | None:
    """The reason :func:`verify_script` gave, as words, or None."""
    for line in stderr.splitlines():
        if line.startswith("@@workdir "):
            key = line.split(None, 1)[1].strip()
            return REASONS.get(key, key)
    return None


# The default work directory of a remote POSIX device: private to the user, never a shared /tmp/edgerun.
DEFAULT_WORK_DIR_SCRIPT = ('if [ -n "$HOME" ] && [ "$HOME" != / ] && [ -d "$HOME" ] && [ -w "$HOME" ]; '
                           'then printf "%s/.cache/edgerun\\n" "$HOME"; else printf "/tmp/edgerun-%s\\n" "$(id -u)"; fi')

__all__ = ["MARKER", "check_work_dir", "removable", "create_script", "verify_script", "cleanup_script", "reason",
           "DEFAULT_WORK_DIR_SCRIPT"]
