"""A results folder treated as untrusted input: results folders are shared between colleagues and
machines, so nothing named inside one may reach outside it, run code, or be written by two processes.

- paths read from a folder (`features_file`) must name a file inside its `features/`;
- arrays are read with `allow_pickle=False`;
- the tool's subfolders (`plots/`, `samples/`, `trajectories/`, `features/`) and the files in them are
  never symbolic links when the tool writes there;
- one writer at a time: a lock file names the process that holds the folder.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path, PurePosixPath

import numpy as np

from bench.errors import UserError

FEATURES = "features"
WRITTEN_FOLDERS = ("samples", "trajectories", "plots", "features")
LOCK_NAME = ".sampler-bench.lock"
LOCK_STALE_ENV = "SAMPLER_BENCH_LOCK_STALE_S"
LOCK_STALE_S = 6 * 3600.0  # a lock from another host not refreshed for this long is stale (its run is gone)


# --------------------------------------------------------------------------- reading


def feature_file(out_dir: Path, name, what: str = "features_file") -> Path:
    """The file `name` (as recorded in results.csv) inside `out_dir/features/`, or a UserError.

    Refused: anything but a relative path `features/<file>`, `..`, absolute paths, and symbolic links
    (of the folder or the file) that point anywhere else.
    """
    out_dir = Path(out_dir)
    shown = f"{out_dir / 'results.csv'}: {what} {name!r}"
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise UserError(f"{shown} is not a file name under {FEATURES}/")
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).is_absolute() or len(parts) != 2 or parts[0] != FEATURES or parts[1] in (".", ".."):
        raise UserError(f"{shown} must name a file directly in the folder's {FEATURES}/ (no '..', no absolute path)")
    folder = out_dir / FEATURES
    path = folder / parts[1]
    if folder.is_symlink() or path.is_symlink():
        raise UserError(f"{shown} goes through a symbolic link; a results folder's {FEATURES}/ holds plain files")
    return path


def load_array(path: Path) -> np.ndarray:
    """A .npy array of numbers, never a pickle; anything else is a UserError naming the file."""
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        detail = "it holds pickled objects" if "pickle" in str(exc) else (str(exc).splitlines() or ["unreadable"])[0]
        raise UserError(f"{path}: not a plain numeric .npy array ({detail})") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiub":
        raise UserError(f"{path}: expected a numeric array, found dtype {getattr(array, 'dtype', type(array))}")
    return array


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file, never pickles; a UserError naming the file otherwise."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        detail = "it holds pickled objects" if "pickle" in str(exc) else type(exc).__name__
        raise UserError(f"{path}: not a plain .npz of numeric arrays ({detail})") from None


# --------------------------------------------------------------------------- writing


def refuse_links(out_dir: Path) -> None:
    """A UserError when a folder the tool writes (or a file in one, or a top-level file) is a symbolic link."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    from bench.results import TOOL_FILES

    for name in (*WRITTEN_FOLDERS, *TOOL_FILES):
        entry = out_dir / name
        if entry.is_symlink():
            raise UserError(f"{entry} is a symbolic link; sampler-bench never writes through links in a results "
                            "folder (replace it with a plain folder or file, or use another --out)")
        if name in WRITTEN_FOLDERS and entry.is_dir():
            linked = [e.name for e in entry.iterdir() if e.is_symlink()]
            if linked:
                raise UserError(f"{entry} holds symbolic link(s) {', '.join(sorted(linked)[:3])}; sampler-bench "
                                "never writes through links in a results folder")


def subfolder(out_dir: Path, name: str) -> Path:
    """`out_dir/name`, created if needed, refused if it is (or became) a symbolic link."""
    path = Path(out_dir) / name
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link; sampler-bench never writes through links in a results folder")
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------- one writer


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def read_lock(out_dir: Path) -> dict | None:
    """The lock's holder {pid, host, command, started} when a live process holds `out_dir`, else None
    (no lock, or a stale one: its process is gone, or another host's lock was not refreshed for hours)."""
    path = Path(out_dir) / LOCK_NAME
    try:
        text = path.read_text()
        age = time.time() - path.stat().st_mtime
    except (OSError, UnicodeDecodeError):
        return None
    try:
        holder = json.loads(text)
        pid, host = int(holder["pid"]), str(holder["host"])
    except (ValueError, KeyError, TypeError):  # a half-written or foreign lock: stale unless fresh
        return {"pid": "?", "host": "?", "command": "unknown"} if age < 60 else None
    if pid == os.getpid() and host == socket.gethostname():
        return None
    if host == socket.gethostname():
        return holder if _alive(pid) else None
    stale = float(os.environ.get(LOCK_STALE_ENV, LOCK_STALE_S))
    return holder if age < stale else None


def _busy_error(out_dir: Path, holder: dict) -> UserError:
    return UserError(f"{out_dir} is being written by another sampler-bench process (pid {holder.get('pid')} on "
                     f"{holder.get('host')}: {holder.get('command', '?')}, since {holder.get('started', '?')}); "
                     f"wait for it to finish, or stop it (a lock whose process is gone is ignored)")


def refuse_if_locked(out_dir: Path) -> None:
    """A UserError naming the other process when a live process holds `out_dir`."""
    holder = read_lock(out_dir)
    if holder is not None:
        raise _busy_error(out_dir, holder)


_HELD: set[Path] = set()


def acquire_lock(out_dir: Path) -> Path:
    """Take `out_dir` for this process (creating the folder); a UserError when another live process holds it.

    The lock file is created with O_EXCL, so of two runs started together exactly one wins; a stale
    lock (its process is gone) is replaced.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_NAME
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link; remove it")
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                         "command": " ".join(["python -m bench", *sys.argv[1:]])[:300],
                         "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    for _attempt in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = read_lock(out_dir)
            if holder is not None:
                raise _busy_error(out_dir, holder) from None
            try:
                path.unlink()  # stale: its process is gone
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(record)
        _HELD.add(path)
        return path
    raise _busy_error(out_dir, read_lock(out_dir) or {"pid": "?", "host": "?"})


def refresh_lock(out_dir: Path) -> None:
    """Mark the lock as still in use (its age tells other hosts whether the run is alive)."""
    path = Path(out_dir) / LOCK_NAME
    if path in _HELD:
        try:
            os.utime(path)
        except OSError:
            pass


def release_lock(out_dir: Path) -> None:
    """Give `out_dir` back (a no-op when this process does not hold it)."""
    path = Path(out_dir) / LOCK_NAME
    if path in _HELD:
        _HELD.discard(path)
        try:
            path.unlink()
        except OSError:
            pass
