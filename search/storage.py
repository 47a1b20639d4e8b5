"""Where experiments live: local directories or URIs pyarrow supports (s3://, gs://...).

JSON files of an experiment are replaced atomically (write, then move), so a reader sees the old
or the new file, never a partial one; non-finite floats are written as null (cvae.jsonsafe).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow.fs

from cvae import jsonsafe


class UsageError(Exception):
    """A command-line mistake (a flag, the storage, the experiment); the message is one line."""


def storage_root(storage: str) -> str:
    """A URI unchanged, a local path made absolute (Ray needs absolute paths)."""
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def check_storage(storage: str) -> None:
    """A local --storage must be a directory, or creatable, and writable: probed with a
    temporary file in it or in its nearest existing parent, nothing left behind (raises
    UsageError). URIs are left to Ray."""
    if "://" in storage:
        return
    path = Path(storage)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        what = "is a file" if existing == path else f"{existing} is a file"
        raise UsageError(f"--storage {storage}: {what} (expected a directory)")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise UsageError(f"--storage {storage}: not writable ({existing}: "
                         f"{e.strerror or e})") from None


def open_storage(storage: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """(filesystem, path) for a local directory or a URI pyarrow supports (s3://, gs://...)."""
    if "://" in storage:
        return pyarrow.fs.FileSystem.from_uri(storage)
    return pyarrow.fs.LocalFileSystem(), storage


def write_json(fs: pyarrow.fs.FileSystem, path: str, data: Any) -> None:
    """Replace `path` atomically: readers see the old or the new file, never a partial one."""
    tmp = f"{path}.tmp"
    fs.create_dir(str(PurePosixPath(path).parent), recursive=True)
    with fs.open_output_stream(tmp) as f:
        f.write(jsonsafe.dumps(data, indent=1, default=jsonsafe.plain).encode())
    fs.move(tmp, path)


def read_json(fs: pyarrow.fs.FileSystem, path: str) -> Any:
    with fs.open_input_stream(path) as f:
        return json.loads(f.readall().decode())


def write_local_json(path: Path, data: Any) -> None:
    """`write_json` for a path on this machine."""
    write_json(pyarrow.fs.LocalFileSystem(), str(path), data)


def download(fs: pyarrow.fs.FileSystem, src: str, dst: str) -> None:
    """Copy a file from the experiment's filesystem to a local path, if it exists there."""
    if fs.get_file_info(src).type != pyarrow.fs.FileType.File:
        return
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(src) as f:
        Path(dst).write_bytes(f.readall())


def short(text: str, width: int = 60) -> str:
    """Text cut to `width` characters ("..." at the end), for one-line messages."""
    return text if len(text) <= width else text[:width - 3] + "..."
