"""Temp files that cannot be hijacked, and the cleaning of those a killed run left behind.

Why: outputs are written as a temp file beside the target, then renamed. A fixed temp name
(`.r.html.tmp`) lets anyone who can write the folder plant a symlink there and have us overwrite
the symlink's target; `mkstemp`/`mkdtemp` create a fresh name with O_EXCL instead. Every temp name
we create carries a marker, our PID and a tag of this host (`.o.onnx.osc-1234.5e3a1f-k2j3.tmp`,
`osc-weights-1234.5e3a1f-x8a2`), so the next run can tell a leftover of a dead process (safe to
delete) from a live run's files or the user's own: a name without the marker is never touched,
nor one made on another host (a shared folder) or by a PID that is alive.

Stdlib only: the lowest layer, used by graph/, runtime/, search/ and the CLI alike (report/ imports
nothing of the package: its callers write its pages with write_atomic).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

#: ties a temp name to this machine: a PID is only meaningful on the host that issued it
HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]
_OWNED = re.compile(r"osc-(?:weights-)?(\d+)\.([0-9a-f]{6})-")
_LEGACY_WORKSPACE = re.compile(r"^osc-weights-[A-Za-z0-9_]+$")
_LEGACY_PID = re.compile(r"^(?:scratch-(\d+)\.bin|session-(\d+)-[0-9a-f]+\.onnx)$")
#: a legacy workspace (no PID in its name) is only removed once nothing in it changed for this long
LEGACY_AGE_S = 3600.0


def owner_tag() -> str:
    """`<pid>.<host tag>`: what temp names embed so that a later run can judge them."""
    return f"{os.getpid()}.{HOST_TAG}"


def temp_prefix(name: str) -> str:
    """Prefix for mkstemp/mkdtemp of a temp file beside the output `name` (hidden, marked, ours)."""
    return f".{name}.osc-{owner_tag()}-"


def workspace_prefix() -> str:
    return f"osc-weights-{owner_tag()}-"


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists here (a PID we may not signal exists too)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return True
    return True


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to a fresh temp file beside `path` (O_EXCL), then rename it over `path`.

    Never opens a pre-existing name, so a symlink planted at any temp name is not followed; the
    rename replaces a symlink at `path` itself, never its target."""
    p = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(p.name), suffix=".tmp", dir=p.absolute().parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return p


def raise_if_full(folder: str | os.PathLike, need: int, cause: BaseException | None = None) -> None:
    """After a tool (ORT, a profiler) failed writing into `folder`: if the folder has less than
    `need` bytes free, that was the reason; say so as OSError(ENOSPC), which the entry points map
    to exit 2 ("free some space"), instead of the tool's "Protobuf serialization failed"."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < need:
        raise OSError(errno.ENOSPC, f"No space left on device ({free} bytes free, about {need} needed)", str(folder)) from cause


def _stale_owned(name: str) -> bool:
    m = _OWNED.search(name)
    if m is None or m.group(2) != HOST_TAG:
        return False
    if not (name.startswith(".") or name.startswith("osc-")):
        return False
    return not pid_alive(int(m.group(1)))


def _stale_legacy_workspace(path: Path, now: float) -> bool:
    """An old-style workspace: stale when every PID-named file in it is of a dead process and
    nothing in it changed for LEGACY_AGE_S (the PIDs in it could be another host's)."""
    try:
        entries = list(path.iterdir())
        newest = max([path.stat().st_mtime, *(e.lstat().st_mtime for e in entries)])
    except OSError:
        return False
    pids = [int(m.group(1) or m.group(2)) for e in entries if (m := _LEGACY_PID.match(e.name))]
    return bool(pids) and not any(pid_alive(p) for p in pids) and now - newest > LEGACY_AGE_S


def remove_stale(folder: str | os.PathLike) -> list[str]:
    """Delete the temp files and workspaces that dead processes of this host left in `folder`.

    Returns the names removed. Errors are ignored: cleaning is a courtesy, never a reason to fail."""
    removed: list[str] = []
    now = time.time()
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        p = Path(folder) / name
        if not (_stale_owned(name) or (_LEGACY_WORKSPACE.match(name) and p.is_dir() and _stale_legacy_workspace(p, now))):
            continue
        try:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(name)
        except OSError:
            continue
    return removed
