"""The one place that reads (and writes) /sys, /proc and /etc, always relative to a root.

A root is a directory ("/" for the live host, or an extracted capture) or a capture tarball.
Every read is cached, so discovery reads each file once, and recorded, so `capture` can pack
exactly the files that discovery read.

A root is untrusted input (a capture from another host, a tree someone else can write), so:
- only regular files are read (and written in place), directories listed: FIFOs, sockets and
  devices are never opened (a pre-stat) and never block an open (O_NONBLOCK, then fstat);
- a symlink whose target leaves the root is refused on read, list and write (the real path of the
  opened file, from /proc/self/fd, must lie under the root); symlinks inside the root keep working,
  and under the live root "/" every path is inside (/sys has many legitimate symlinks);
- a path with a ".." component (or a NUL) is refused everywhere (`check_path`), so paths from a
  state file cannot reach outside the root;
- reads stop at MAX_READ bytes; tarball roots are streamed with per-member, member-count and
  total-size caps, so a gzip bomb stops at the cap.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import stat
from dataclasses import dataclass, field

from hosttune.errors import HosttuneError, TopologyError

log = logging.getLogger(__name__)

MAX_READ = 1 << 20  # /proc/interrupts on a 1024-CPU host is a few MB at most; cap the odd huge file
MAX_TAR_MEMBERS = 100_000  # a capture of a 1024-CPU, 4000-IRQ host holds about 30,000
MAX_TAR_BYTES = 256 << 20  # sum of the members' sizes: what streaming a tarball may decompress

_MAGIC = ((b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))  # else an uncompressed tar
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _lzma_error() -> type[Exception]:
    try:
        from lzma import LZMAError  # a corrupt .tar.xz; bz2 and gzip raise OSError / zlib.error
    except ImportError:  # a Python built without lzma opens no .tar.xz at all
        return OSError
    return LZMAError


def _rel(path: str) -> str:
    return path.lstrip("/")


class _Refused(OSError):
    """A path the root does not allow: outside it through a symlink, or not a regular file."""


def _escapes(key: str) -> _Refused:
    return _Refused(errno.EXDEV, "refused: a symlink leads out of the root", "/" + key)


def _not_regular(key: str) -> _Refused:
    return _Refused(errno.EPERM, "refused: not a regular file", "/" + key)


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
        self._real_root = os.path.realpath(self.root)
        self._live = self._real_root == "/"
        self._real_prefix = self._real_root.rstrip("/") + "/"
        self._real_dirs: dict[str, str] = {}
        self._dirs_inside: dict[str, bool] = {}
        self._raw: dict[str, bytes] | None = None  # see keep_raw

    @property
    def is_live(self) -> bool:
        return self._live

    def host_path(self, path: str) -> str:
        """The real filesystem path of a host path under this root."""
        return os.path.join(self.root, self.check_path(path))

    def check_path(self, path: str) -> str:
        """The path relative to the root ("/proc/sys/vm/swappiness" -> "proc/sys/vm/swappiness").

        Raises HosttuneError for anything that is not a plain path inside the root: not a string,
        empty, a NUL byte, or a ".." component (e.g. "/../etc/shadow" from a tampered state file).
        Every read and write goes through it.
        """
        if not isinstance(path, str) or not path.strip("/") or "\0" in path or (
                ".." in path and ".." in path.split("/")):
            shown = repr(path) if len(repr(path)) <= 80 else repr(path)[:77] + "..."
            raise HosttuneError(f"refused path {shown}: host paths are absolute, without '..' or NUL",
                                where=self.root)
        return _rel(path)

    def _inside(self, fd: int, path: str) -> bool:
        """Whether the file open on `fd` (reached through `path`) lies under the root."""
        if self._live:
            return True
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")  # what was really opened: no race with the path
        except OSError:
            real = os.path.realpath(path)
        return self._under(real)

    def _under(self, real: str) -> bool:
        return real == self._real_root or real.startswith(self._real_prefix)

    def _real_dir(self, folder: str) -> str:
        """The real path of a directory under the root, resolved one new component at a time and
        cached: discovery reads 20,000 files from a few thousand directories."""
        real = self._real_dirs.get(folder)
        if real is None:
            parent, _, name = folder.rpartition("/")
            path = self._prefix + folder
            if not folder:
                real = self._real_root
            elif os.path.islink(path):
                real = os.path.realpath(path)
            else:
                real = self._real_dir(parent) + "/" + name
            self._real_dirs[folder] = real
        return real

    def _open_regular(self, key: str, flags: int, regular_only: bool = True) -> int:
        """Open a regular file under the root; _Refused for other kinds and for escapes.

        The (cached) real directory must be inside the root, and a last component that is a symlink
        is followed only to a target inside it. Writes also check the opened file itself (no race
        with a directory swapped meanwhile). Under the live root everything is inside.
        """
        path = self._prefix + key
        if not self._live:
            folder = key.rpartition("/")[0]
            inside = self._dirs_inside.get(folder)
            if inside is None:
                inside = self._dirs_inside[folder] = self._under(self._real_dir(folder))
            if not inside:
                raise _escapes(key)
        try:
            fd = os.open(path, flags | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            path = os.path.realpath(path)  # the file itself is a symlink: followed only inside the root
            if not self._under(path):
                raise _escapes(key) from None
            fd = os.open(path, flags | os.O_NOFOLLOW)
        try:
            if regular_only and not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _not_regular(key)  # O_NONBLOCK: a FIFO or device did not block the open
            if flags & (os.O_WRONLY | os.O_RDWR) and not self._inside(fd, path):
                raise _escapes(key)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_dir(self, key: str, create: bool = False) -> int:
        """Open a directory under the root (made first when `create`); _Refused for escapes."""
        path = self._prefix + key
        if create:
            real = os.path.realpath(path)  # existing parts resolved: never create outside the root
            if not self._live and not self._under(real):
                raise _escapes(key)
            os.makedirs(path, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC)
        if not self._inside(fd, path):
            os.close(fd)
            raise _escapes(key)
        return fd

    # -- reads ---------------------------------------------------------------------------------
    def read(self, path: str) -> str | None:
        """File content with the trailing newline stripped, or None if it does not exist or
        cannot be read (sysfs files that exist but error on read, e.g. EIO, count as absent).
        At most MAX_READ bytes; a non-regular file or a symlink out of the root reads as None."""
        key = self.check_path(path)
        if key in self._cache:
            return self._cache[key]
        value = self._read_uncached(key)
        self._cache[key] = value
        return value

    def _read_uncached(self, key: str) -> str | None:
        # the live /sys and /proc hold no FIFOs or devices where hosttune reads, and O_NONBLOCK
        # keeps an odd one from blocking: the agent's checks save the fstat on every read
        data = self._read_raw(key, MAX_READ, regular_only=not self._live)
        if data is None:
            return None
        if self._raw is not None:
            self._raw[key] = data
        return data.decode("utf-8", "replace").rstrip("\n")

    def _read_raw(self, key: str, limit: int, regular_only: bool = True) -> bytes | None:
        """Up to `limit` bytes, or None."""
        try:
            fd = self._open_regular(key, _READ_FLAGS, regular_only)
        except _Refused as exc:
            log.warning("skipping /%s: %s", key, exc.strerror)
            return None
        except OSError:
            return None
        try:
            chunks = []
            size = 0
            while size < limit:
                chunk = os.read(fd, min(65536, limit - size))  # sysfs values are one page at most
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError:
            return None
        finally:
            os.close(fd)
        return b"".join(chunks)

    def read_bytes(self, path: str, limit: int = MAX_READ) -> bytes | None:
        """The exact bytes of a regular file (no decoding, nothing stripped, never cached), or
        None if it does not exist, cannot be read, is not a regular file or leads out of the root.
        Raises OSError(EFBIG) above `limit` bytes: an original cut short must never be restored."""
        key = self.check_path(path)
        data = self._read_raw(key, limit + 1)
        if data is not None and len(data) > limit:
            raise OSError(errno.EFBIG, f"file larger than {limit} bytes", "/" + key)
        return data

    def stat_file(self, path: str) -> tuple[int, int, int] | None:
        """(permission bits, uid, gid) of a regular file, e.g. (0o640, 0, 1), or None like
        read_bytes. With read_bytes, what restore needs to put a config file back exactly."""
        key = self.check_path(path)
        try:
            fd = self._open_regular(key, _READ_FLAGS)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid

    def listdir(self, path: str) -> list[str] | None:
        """Sorted entries of a directory, or None if it does not exist (or leads out of the root)."""
        key = self.check_path(path) if path.strip("/") else ""
        if key in self._dirs:
            return self._dirs[key]
        entries = None
        if self._live or self._under(self._real_dir(key)):
            try:
                entries = sorted(os.listdir(self._prefix + key))
            except OSError:
                pass
        else:
            log.warning("skipping /%s: %s", key, _escapes(key).strerror)
        self._dirs[key] = entries
        return entries

    def exists(self, path: str) -> bool:
        key = self.check_path(path)
        if self._cache.get(key) is not None or self._dirs.get(key) is not None:
            return True
        if key not in self._exists:
            self._exists[key] = os.path.lexists(os.path.join(self.root, key))
        return self._exists[key]

    # -- writes (apply/restore) ----------------------------------------------------------------
    def write(self, path: str, value: str | bytes) -> None:
        """Write a sysfs/procfs value in place (no temp file: those files cannot be renamed).

        Only an existing regular file inside the root, never through a symlink as last component.
        Raises OSError with the host path in `filename`, so callers can name file and errno.
        """
        key = self.check_path(path)
        data = value.encode() if isinstance(value, str) else value
        try:
            if self._live:
                fd = self._open_regular(key, _WRITE_FLAGS | os.O_TRUNC)
            else:
                fd = self._open_regular(key, _WRITE_FLAGS)  # truncated only once known to be inside
                os.ftruncate(fd, 0)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, "/" + key) from None
        try:
            os.write(fd, data)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, "/" + key) from None
        finally:
            os.close(fd)
        self._invalidate(key)

    def write_file_atomic(self, path: str, content: str | bytes, mode: int = 0o644,
                          uid: int | None = None, gid: int | None = None) -> None:
        """Replace a regular file (config, state) atomically: temp file in the same dir + rename.

        `content` bytes are written exactly as given (str is UTF-8 encoded; nothing is added, no
        newline). `mode` sets the permission bits; `uid` / `gid`, when given, the owner and group
        (restore passes what stat_file returned). The directory is created if missing and must
        lie inside the root; a symlink at `path` is replaced, never followed.
        """
        key = self.check_path(path)
        folder, _, name = key.rpartition("/")
        data = content.encode("utf-8") if isinstance(content, str) else content
        tmp = f"{name}.hosttune-tmp.{os.getpid()}"  # engine.recover removes leftovers of a killed run
        try:
            dir_fd = self._open_dir(folder, create=True)
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, "/" + key) from None
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                         dir_fd=dir_fd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fchmod(fd, mode)
                if uid is not None or gid is not None:
                    os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
                    os.fchmod(fd, mode)  # chown clears setuid/setgid bits
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
        except OSError as exc:
            try:
                os.unlink(tmp, dir_fd=dir_fd)
            except OSError:
                pass
            raise OSError(exc.errno, exc.strerror, "/" + key) from None
        finally:
            os.close(dir_fd)
        self._invalidate(key)

    def remove(self, path: str) -> None:
        """Remove a file (absent is fine); the directory holding it must lie inside the root."""
        key = self.check_path(path)
        folder, _, name = key.rpartition("/")
        try:
            dir_fd = self._open_dir(folder)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, "/" + key) from None
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, "/" + key) from None
        finally:
            os.close(dir_fd)
        self._invalidate(key)

    def keep_raw(self, on: bool) -> None:
        """While on, the exact bytes of every file read are kept beside its cached text (`raw`):
        the agent's fast check compares what it re-reads with them byte for byte."""
        self._raw = {} if on else None

    def raw(self, key: str) -> bytes | None:
        return None if self._raw is None else self._raw.get(key)

    def _invalidate(self, key: str) -> None:
        if self._raw is not None:
            self._raw.pop(key, None)
        self._cache.pop(key, None)
        self._exists.pop(key, None)
        self._dirs.pop(key.rpartition("/")[0], None)

    def forget(self) -> None:
        """Drop the read cache (the agent re-reads live values on every check)."""
        self._cache.clear()
        if self._raw is not None:
            self._raw.clear()
        self._dirs.clear()
        self._exists.clear()
        self._real_dirs.clear()
        self._dirs_inside.clear()

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

    _files: dict[str, bytes]
    _meta: dict[str, tuple[int, int, int]]
    _tree: dict[str, set[str]]

    @classmethod
    def load(cls, tar_path: str) -> TarHostFS:
        """Read the tarball in one pass: at most MAX_TAR_MEMBERS members and MAX_TAR_BYTES of
        member data, each file cut at MAX_READ like a directory root's reads (the rest is skipped
        in chunks, never held). Anything unreadable (truncated, empty, not a tarball) is one
        TopologyError naming the file."""
        import tarfile  # only for tarball roots: it pulls in bz2/lzma, which the agent need not carry
        import zlib

        fs = cls(root=tar_path)
        fs._files, fs._meta, fs._tree = {}, {}, {}
        total = 0
        try:
            with open(tar_path, "rb") as handle:
                magic = handle.read(6)
            compression = next((c for m, c in _MAGIC if magic.startswith(m)), "")
            # not the stream mode ("r|*"): its gzip reader takes a truncated file for a complete one
            with tarfile.open(tar_path, f"r:{compression}") as archive:
                for count, member in enumerate(archive, 1):
                    total += max(member.size, 0)
                    if count > MAX_TAR_MEMBERS or total > MAX_TAR_BYTES:
                        raise TopologyError(f"capture tarball holds more than {MAX_TAR_MEMBERS} members or "
                                            f"{MAX_TAR_BYTES >> 20} MiB: not a hosttune capture", where=tar_path)
                    name = _rel(os.path.normpath(member.name))
                    if name in (".", "") or name == ".." or name.startswith("../") or "\0" in name:
                        continue
                    fs._add_parents(name)
                    if member.isdir():
                        fs._tree.setdefault(name, set())
                    elif member.isfile():
                        data = archive.extractfile(member)
                        fs._files[name] = data.read(MAX_READ) if data else b""
                        fs._meta[name] = (stat.S_IMODE(member.mode), member.uid, member.gid)
                    archive.members.clear()  # tarfile keeps every header otherwise
                # read the end-of-archive padding too, so a gzip stream cut short is noticed
                for _ in range(64):
                    if not archive.fileobj.read(1 << 16):
                        break
        except (tarfile.TarError, OSError, EOFError, zlib.error, _lzma_error()) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise TopologyError(f"not a readable capture tarball ({reason[:120]})", where=tar_path) from None
        if not fs._files:
            raise TopologyError("capture tarball holds no files", where=tar_path)
        return fs

    def _add_parents(self, name: str) -> None:
        parent, _, child = name.rpartition("/")
        while child:
            self._tree.setdefault(parent, set()).add(child)
            name = parent
            parent, _, child = name.rpartition("/")

    def host_path(self, path: str) -> str:
        raise TopologyError("a capture tarball is read-only; extract it to apply to it", where=self.root)

    def _read_uncached(self, key: str) -> str | None:
        data = self._files.get(key)
        return None if data is None else data.decode("utf-8", "replace").rstrip("\n")

    def read_bytes(self, path: str, limit: int = MAX_READ) -> bytes | None:
        return self._files.get(self.check_path(path))

    def stat_file(self, path: str) -> tuple[int, int, int] | None:
        return self._meta.get(self.check_path(path))

    def listdir(self, path: str) -> list[str] | None:
        key = self.check_path(path) if path.strip("/") else ""
        if key not in self._dirs:
            entries = self._tree.get(key)
            self._dirs[key] = sorted(entries) if entries is not None else None
        return self._dirs[key]

    def exists(self, path: str) -> bool:
        key = self.check_path(path)
        return key in self._files or key in self._tree

    def write(self, path: str, *args: object, **kw: object) -> None:  # type: ignore[override]
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
