"""The one place that reads (and writes) /sys, /proc and /etc, always relative to a root.

A root is a directory ("/" for the live host, or an extracted capture) or a capture tarball.
Every read is cached, so discovery reads each file once, and recorded, so `capture` can pack
exactly the files that discovery read.
"""

from __future__ import annotations

import errno
import io
import os
from dataclasses import dataclass, field

from hosttune.errors import TopologyError

MAX_READ = 1 << 20  # /proc/interrupts on a 1024-CPU host is a few MB at most; cap the odd huge file


def _rel(path: str) -> str:
    return path.lstrip("/")


@dataclass
class HostFS:
    """Read-through, caching access to a host tree under `root`."""

    root: str = "/"
    _cache: dict[str, str | None] = field(default_factory=dict)
    _dirs: dict[str, list[str] | None] = field(default_factory=dict)
    _exists: dict[str, bool] = field(default_factory=dict)

    @classmethod
    def open(cls, root: str | None) -> HostFS:
        """A HostFS for a directory or a capture tarball; errors name the root."""
        root = root or "/"
        if os.path.isfile(root):
            return TarHostFS.load(root)
        if not os.path.isdir(root):
            raise TopologyError("no such directory or capture file", where=root)
        if not os.access(root, os.R_OK | os.X_OK):
            raise TopologyError("root is not readable", where=root)
        return cls(root=root)

    def __post_init__(self) -> None:
        self._prefix = self.root if self.root.endswith("/") else self.root + "/"

    @property
    def is_live(self) -> bool:
        return os.path.realpath(self.root) == "/"

    def host_path(self, path: str) -> str:
        """The real filesystem path of a host path under this root."""
        return os.path.join(self.root, _rel(path))

    # -- reads ---------------------------------------------------------------------------------
    def read(self, path: str) -> str | None:
        """File content with the trailing newline stripped, or None if it does not exist or
        cannot be read (sysfs files that exist but error on read, e.g. EIO, count as absent)."""
        key = _rel(path)
        if key in self._cache:
            return self._cache[key]
        value = self._read_uncached(key)
        self._cache[key] = value
        return value

    def _read_uncached(self, key: str) -> str | None:
        try:
            fd = os.open(self._prefix + key, os.O_RDONLY)
        except OSError:
            return None
        try:
            chunks = []
            size = 0
            while size < MAX_READ:
                chunk = os.read(fd, 8192)  # sysfs values are one page at most
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError:
            return None
        finally:
            os.close(fd)
        return b"".join(chunks).decode("utf-8", "replace").rstrip("\n")

    def listdir(self, path: str) -> list[str] | None:
        """Sorted entries of a directory, or None if it does not exist."""
        key = _rel(path)
        if key in self._dirs:
            return self._dirs[key]
        try:
            entries = sorted(os.listdir(os.path.join(self.root, key)))
        except OSError:
            entries = None
        self._dirs[key] = entries
        return entries

    def exists(self, path: str) -> bool:
        key = _rel(path)
        if self._cache.get(key) is not None or self._dirs.get(key) is not None:
            return True
        if key not in self._exists:
            self._exists[key] = os.path.lexists(os.path.join(self.root, key))
        return self._exists[key]

    # -- writes (apply/restore) ----------------------------------------------------------------
    def write(self, path: str, value: str) -> None:
        """Write a sysfs/procfs value in place (no temp file: those files cannot be renamed).

        Raises OSError with the host path in `filename`, so callers can name file and errno.
        """
        key = _rel(path)
        real = os.path.join(self.root, key)
        try:
            fd = os.open(real, os.O_WRONLY | os.O_TRUNC)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, "/" + key) from None
        try:
            os.write(fd, value.encode())
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, "/" + key) from None
        finally:
            os.close(fd)
        self._invalidate(key)

    def read_bytes(self, path: str) -> bytes | None:
        """A file's exact bytes (not cached, no decoding, no newline stripped), or None if absent."""
        try:
            with open(os.path.join(self.root, _rel(path)), "rb") as handle:
                return handle.read(MAX_READ + 1)[:MAX_READ]
        except OSError:
            return None

    def stat_file(self, path: str) -> tuple[int, int, int] | None:
        """(permission bits, uid, gid) of a file, or None if it does not exist."""
        try:
            st = os.lstat(os.path.join(self.root, _rel(path)))
        except OSError:
            return None
        return st.st_mode & 0o7777, st.st_uid, st.st_gid

    def write_file_atomic(self, path: str, content: str | bytes, mode: int = 0o644, uid: int | None = None,
                          gid: int | None = None) -> None:
        """Replace a regular file (config, state) atomically: temp file in the same dir + rename.
        Bytes are written exactly; uid/gid, when given, set the owner (restore gives back the original's)."""
        key = _rel(path)
        real = os.path.join(self.root, key)
        os.makedirs(os.path.dirname(real), exist_ok=True)
        tmp = f"{real}.hosttune-tmp.{os.getpid()}"  # engine.recover removes leftovers of a killed run
        data = content.encode() if isinstance(content, str) else content
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
                if uid is not None or gid is not None:
                    os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            os.replace(tmp, real)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise OSError(exc.errno, exc.strerror, "/" + key) from None
        self._invalidate(key)

    def remove(self, path: str) -> None:
        key = _rel(path)
        try:
            os.unlink(os.path.join(self.root, key))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, "/" + key) from None
        self._invalidate(key)

    def _invalidate(self, key: str) -> None:
        self._cache.pop(key, None)
        self._exists.pop(key, None)
        self._dirs.pop(key.rpartition("/")[0], None)

    def forget(self) -> None:
        """Drop the read cache (the agent re-reads live values on every check)."""
        self._cache.clear()
        self._dirs.clear()
        self._exists.clear()

    # -- capture -------------------------------------------------------------------------------
    def recorded(self) -> tuple[dict[str, str], list[str]]:
        """(files read -> content, directories listed), for packing a capture."""
        files = {k: v for k, v in self._cache.items() if v is not None}
        # files only tested for existence (e.g. the irqbalance binary) are kept as empty markers
        files.update({k: "" for k, seen in self._exists.items() if seen and k not in files})
        dirs = [k for k, v in self._dirs.items() if v is not None]
        return files, dirs


class TarHostFS(HostFS):
    """A capture tarball used as a root, read into memory (read-only)."""

    _files: dict[str, str]
    _tree: dict[str, set[str]]

    @classmethod
    def load(cls, tar_path: str) -> TarHostFS:
        import tarfile  # only for tarball roots: it pulls in bz2/lzma, which the agent need not carry

        try:
            archive = tarfile.open(tar_path, "r:*")
        except (tarfile.TarError, OSError) as exc:
            raise TopologyError(f"not a readable capture tarball ({exc})", where=tar_path) from None
        fs = cls(root=tar_path)
        fs._files, fs._tree = {}, {}
        with archive:
            for member in archive.getmembers():
                name = _rel(os.path.normpath(member.name))
                if name in (".", ""):
                    continue
                fs._add_parents(name)
                if member.isdir():
                    fs._tree.setdefault(name, set())
                elif member.isfile():
                    data = archive.extractfile(member)
                    fs._files[name] = (data.read() if data else b"").decode("utf-8", "replace").rstrip("\n")
        if not fs._files:
            raise TopologyError("capture tarball holds no files", where=tar_path)
        return fs

    def _add_parents(self, name: str) -> None:
        parent, _, child = name.rpartition("/")
        while child:
            self._tree.setdefault(parent, set()).add(child)
            name = parent
            parent, _, child = name.rpartition("/")

    @property
    def is_live(self) -> bool:
        return False

    def host_path(self, path: str) -> str:
        raise TopologyError("a capture tarball is read-only; extract it to apply to it", where=self.root)

    def _read_uncached(self, key: str) -> str | None:
        return self._files.get(key)

    def listdir(self, path: str) -> list[str] | None:
        key = _rel(path)
        if key not in self._dirs:
            entries = self._tree.get(key)
            self._dirs[key] = sorted(entries) if entries is not None else None
        return self._dirs[key]

    def exists(self, path: str) -> bool:
        key = _rel(path)
        return key in self._files or key in self._tree

    def write(self, path: str, value: str) -> None:
        raise OSError(errno.EROFS, "capture tarball is read-only", "/" + _rel(path))

    write_file_atomic = write  # type: ignore[assignment]
    remove = write  # type: ignore[assignment]

    def forget(self) -> None:  # nothing changes under a tarball
        pass


def pack(files: dict[str, str], dirs: list[str], out_path: str) -> None:
    """Write a capture tarball of the given files and directories (atomic: temp + rename)."""
    import tarfile

    tmp = f"{out_path}.tmp.{os.getpid()}"
    try:
        with tarfile.open(tmp, "w:gz") as archive:
            for name in sorted(set(dirs)):
                info = tarfile.TarInfo(name)
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                archive.addfile(info)
            for name in sorted(files):
                data = (files[name] + "\n").encode()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mode = 0o644
                archive.addfile(info, io.BytesIO(data))
        os.replace(tmp, out_path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise TopologyError(f"cannot write capture ({exc.strerror})", where=out_path) from None
