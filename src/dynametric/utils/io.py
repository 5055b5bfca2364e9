"""Atomic file writes: a reader never sees a half-written checkpoint or output file."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _umask_mode() -> int:
    """The mode a plain ``open(path, "w")`` gives a new file: 0o666 minus the process umask (mkstemp uses 0o600)."""
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where the system shows it (Linux: ``Umask:`` of
    ``/proc/self/status``), so that no other thread ever creates a file under a umask of 0; elsewhere it is read
    once the only way POSIX offers (set and restored) and kept."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8) & 0o777
    except (OSError, ValueError, IndexError):
        pass
    return _umask_set_and_restored()


@functools.lru_cache(maxsize=1)
def _umask_set_and_restored() -> int:
    mask = os.umask(0o077)  # the most restrictive value while it is set: a file another thread makes meanwhile
    os.umask(mask)          # is private, never world-writable
    return mask


def replacement_mode(path: str | Path, key: str | None = None) -> int:
    """The permission bits the new content of the file ``path`` gets: those of the file it replaces (a file of mode
    0600 stays 0600, 0640 stays 0640), or, for a new file, what a plain ``open`` gives (0o666 minus the umask). A
    file that may not be replaced is an :class:`~dynametric.errors.InputError` ``<path> [key '<key>']: ...; not
    replaced: ...`` naming why, before anything is written (:func:`atomic_open` and every writer built on it ask
    here): on a read-only file system (mounted read-only: no mode helps), a file of another user that this user may
    not write, a file its owner protected (no owner write bit: ``chmod 444``, the one case ``chmod u+w`` mends), or
    one this process may not write otherwise (:func:`_not_replaceable`)."""
    from dynametric.errors import InputError

    path = Path(path)
    try:
        st = os.stat(path)
    except OSError:  # no file there (or none that can be asked): a new file
        return _umask_mode()
    if not stat.S_ISREG(st.st_mode):
        return _umask_mode()
    why = _not_replaceable(path, st)
    if why is not None:
        raise InputError(why, file=path, key=key)
    return stat.S_IMODE(st.st_mode) & 0o777


def _read_only_file_system(path: Path) -> bool:
    """Whether the file system holding ``path`` is mounted read-only (``statvfs``'s ``ST_RDONLY``; ``False`` where
    it cannot be asked: Windows)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _owner_name(uid: int) -> str:
    """``<name>, uid N`` of the user ``uid`` (``uid N`` where the system has no name for it)."""
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name}, uid {uid}"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _not_replaceable(path: Path, st: os.stat_result) -> str | None:
    """Why the existing regular file ``path`` (its ``stat``: ``st``) may not be replaced, or ``None``."""
    mode = stat.S_IMODE(st.st_mode)
    if _read_only_file_system(path):
        return ("is on a read-only file system; not replaced: write to another path (or mount the file system "
                "read-write)")
    euid = os.geteuid() if hasattr(os, "geteuid") else None
    mine = euid is None or st.st_uid == euid
    if not st.st_mode & stat.S_IWUSR and (mine or euid == 0):  # protected by its owner; the owner (root) may chmod
        return (f"is read-only (mode {mode:04o}); not replaced: make it writable (chmod u+w) to have it replaced, "
                "or write to another path")
    if not st.st_mode & stat.S_IWUSR or not os.access(path, os.W_OK):
        if not mine:
            return (f"belongs to another user ({_owner_name(st.st_uid)}; mode {mode:04o}) and this user may not "
                    "write it; not replaced: write to another path, or have its owner make it writable for you")
        return (f"may not be written by this process (mode {mode:04o}: an access control list, an immutable "
                "attribute or the like denies it); not replaced: write to another path")
    return None


def _file_target(path: str | Path, key: str | None = None) -> Path:
    """``path`` as the target of a file write: its missing folders are created (every output file of every command
    is written through here: one rule, docs/reliability.md); a folder at ``path``, or a file where one of its
    folders goes, is an InputError (naming ``key``, the option that named the path, when given)."""
    from dynametric.errors import InputError

    path = Path(path)
    check_name_lengths(path, key, "file")  # a name no file system takes: that name, not a stat error about it
    if path.is_dir():
        raise InputError("is a folder; expected the path of a file to write", file=path, key=key)
    above = path.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if above.exists() and not above.is_dir():  # was `cannot create the folder (File exists)`
        raise InputError(f"is a file, not a folder; expected a folder to hold {path}", file=above, key=key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # the error names the folder that could not be made (the file's, or one above it)
        folder = Path(exc.filename) if exc.filename is not None else path.parent
        raise _write_error(exc, folder, key, "cannot create the folder") from None
    return path


def prepare_file_target(path: str | Path, key: str | None = None) -> Path:
    """``path`` made ready for a write as every atomic write of this module makes it (its missing folders created;
    a folder at ``path`` or a file where a folder goes: one line), for a command that takes the target's lock before
    it writes (``export --out``)."""
    return _file_target(path, key)


def write_error(exc: OSError, path: Path, key: str | None) -> BaseException:
    """The error an atomic write of ``path`` gives for ``exc`` (``<path> key '<key>': cannot write (<reason>)``),
    for a failure of a step of that write outside this module (taking the target's lock)."""
    return _write_error(exc, path, key)


def _write_error(exc: OSError, path: Path, key: str | None, what: str = "cannot write") -> BaseException:
    """An error of the file system while writing ``path``, naming ``path`` (never the temporary file beside it):
    with ``key`` an InputError ``<path> key '<key>': cannot write (<reason>)`` (``what`` for another action), else
    an OSError with ``filename = path`` (the command line prints ``<path>: <reason>``). An error without an
    ``errno`` (numpy's ``... requested and ... written`` of a short write) names the path too; where the file
    system it was written on has no free block left, it is reported as the full disk it is (``ENOSPC``)."""
    import errno

    from dynametric.errors import InputError

    code, reason = exc.errno, exc.strerror or str(exc) or type(exc).__name__
    if code is None and _no_space_left(path):
        code, reason = errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}; {reason}"
    if key is None:
        return OSError(code, reason, str(path))  # an errno gives its subclass (PermissionError ...)
    if code == errno.ENOSPC:
        reason += "; nothing was left half-written: outputs are written to a temporary file and renamed"
    return InputError(f"{what} ({reason})", file=path, key=key)


def _no_space_left(path: Path) -> bool:
    """Whether the file system holding ``path`` (or the nearest folder above it that exists) has no block left."""
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return os.statvfs(folder).f_bavail == 0
    except (OSError, AttributeError):  # no statvfs (Windows), or the folder cannot be asked
        return False


TEMP_SUFFIX = ".tmp"
_TEMP_RANDOM = 8  # the length of tempfile.mkstemp's random part
_TEMP_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")  # and its characters
NAME_MAX = 255
"""The longest file or folder name, in bytes, that the usual file systems take (ext4, XFS, Btrfs, tmpfs, APFS; NTFS
counts 255 UTF-16 units): the limit :func:`temp_prefix` and :func:`check_name_lengths` keep to."""
_TEMP_HASH = 8  # the hex digits of a shortened temporary name's digest of its target


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file (hex), read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def name_bytes(name: str) -> int:
    """The length of the file name ``name`` on disk, in bytes (the file system encoding, as ``os.fsencode``)."""
    return len(os.fsencode(name))


def temp_prefix(target: str) -> str:
    """The start of the temporary file names of an atomic write of the file name ``target``:
    ``.<target>.``, followed by ``tempfile.mkstemp``'s 8 random characters and ``.tmp``. Where that whole name would
    be longer than :data:`NAME_MAX` bytes (a legal target of 242 to 255 bytes), the target is cut, at a character,
    and a digest of the whole target follows it: ``.<start of target>~<8 hex digits>.``; the temporary file stays in
    the target's folder (an atomic rename) and is still known as this tool's and as the target's
    (:func:`is_temp_of`)."""
    full = f".{target}."
    if name_bytes(full) + _TEMP_RANDOM + len(TEMP_SUFFIX) <= NAME_MAX:
        return full
    digest = hashlib.sha256(os.fsencode(target)).hexdigest()[:_TEMP_HASH]
    room = NAME_MAX - _TEMP_RANDOM - len(TEMP_SUFFIX) - name_bytes(f".~{digest}.")
    head = ""
    for char in target:
        if name_bytes(head + char) > room:
            break
        head += char
    return f".{head}~{digest}."


def temp_target(name: str) -> str | None:
    """The file name whose atomic write a temporary file named ``name`` belongs to, or ``None`` when ``name`` is not
    such a temporary file: the one pattern :func:`_replacing` gets from ``tempfile.mkstemp``,
    ``.<target>.<8 random characters>.tmp`` (lower-case letters, digits, ``_``). For the shortened name of a long
    target (:func:`temp_prefix`) it is ``<start of target>~<digest>``, not the target itself: :func:`is_temp_of`
    tells whether such a name belongs to a given target."""
    if not (name.startswith(".") and name.endswith(TEMP_SUFFIX)):
        return None
    stem = name[1:-len(TEMP_SUFFIX)]
    target, dot, middle = stem[:-_TEMP_RANDOM - 1], stem[-_TEMP_RANDOM - 1:-_TEMP_RANDOM], stem[-_TEMP_RANDOM:]
    if not target or dot != "." or len(middle) != _TEMP_RANDOM or not all(c in _TEMP_CHARS for c in middle):
        return None
    return target


def is_temp_of(name: str, target: str) -> bool:
    """Whether the file name ``name`` is a temporary file of an atomic write of ``target`` (a file name), with its
    full name or, for a long target, its shortened one (:func:`temp_prefix`)."""
    stem = temp_target(name)
    return stem is not None and f".{stem}." == temp_prefix(target)


def is_stale_temp(entry: Path, targets: Callable[[str], bool]) -> bool:
    """Whether ``entry`` is what a killed atomic write of this tool leaves for a file name satisfying ``targets``: a
    regular file, not a link, named ``.<target>.<8 random characters>.tmp`` (:func:`temp_target`). The one test of
    every command that removes such files (or recognises a folder by them)."""
    target = temp_target(entry.name)
    return target is not None and targets(target) and entry.is_file() and not entry.is_symlink()


def remove_stale_temps(folder: Path, targets: Callable[[str], bool]) -> list[Path]:
    """Remove what a killed atomic write of this tool left in ``folder`` (a folder the tool owns): the files
    :func:`is_stale_temp` names for ``targets``. Nothing else is touched; returns the removed paths, sorted."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in sorted(folder.iterdir()):
        if is_stale_temp(entry, targets):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def remove_stale_temps_of(path: Path) -> list[Path]:
    """Remove what a killed atomic write of the one file ``path`` left beside it (regular files, not links, that
    :func:`is_temp_of` names for ``path.name``, also the shortened names of a long one): for an output file in a
    folder that is not the tool's (``export --out``, ``data inspect --grid``), to be called once that file is known to
    be the command's to write. Returns the removed paths."""
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    for entry in sorted(path.parent.iterdir()):
        if is_temp_of(entry.name, path.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def holds_only_own_files(folder: Path, names: Collection[str], targets: Callable[[str], bool]) -> bool:
    """Whether ``folder`` holds files and every one of them is this tool's: a regular file (not a link) named in
    ``names``, or what a killed atomic write of a file satisfying ``targets`` leaves, exactly what
    :func:`remove_stale_temps` removes (:func:`is_stale_temp`). With no ``names``: a folder a first run of the
    command that owns those names was killed in before it wrote anything else, which that command may start again."""
    if not folder.is_dir() or folder.is_symlink():
        return False
    entries = list(folder.iterdir())
    return bool(entries) and all((entry.name in names and entry.is_file() and not entry.is_symlink())
                                 or is_stale_temp(entry, targets) for entry in entries)


def _is_own_failure(exc: OSError, path: Path, tmp: str | None) -> bool:
    """Whether ``exc`` is about writing ``path`` (its temporary file, the folder, the rename), not another file."""
    names = {exc.filename, exc.filename2} - {None}
    if not names:
        return True
    for name in names:
        base = os.path.basename(os.fspath(name))
        if os.fspath(name) in (tmp, str(path)) or is_temp_of(base, path.name) or Path(name) == path.parent:
            return True
    return False


@contextmanager
def _replacing(path: Path, key: str | None = None, *, stage: bool = False) -> Iterator[tuple[int, str]]:
    """A temporary file beside ``path`` (open descriptor, name): when the block ends it gets the mode of the file it
    replaces, or the one a plain ``open`` would give a new file (:func:`replacement_mode`), and atomically replaces
    ``path`` (with ``stage``: is left beside it for :func:`commit_staged`); when the block raises it is removed and
    ``path`` is left untouched. A read-only ``path`` is refused before the block runs. An error of the file system
    about the write names ``path`` (see :func:`_write_error`)."""
    replacement_mode(path, key)  # a file the user protected: refused before anything is written
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=TEMP_SUFFIX, dir=path.parent)
        yield fd, tmp
        os.chmod(tmp, replacement_mode(path, key))  # the mode now: the write may have taken a while
        if not stage:
            os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        if _is_own_failure(exc, path, tmp):
            raise _write_error(exc, path, key) from None
        raise
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, key: str | None = None, **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    On an exception the temporary file is removed and any existing ``path`` is left untouched. ``key``: the
    option that named ``path``, named in a write error (an InputError then).
    """
    with _replacing(_file_target(path, key), key) as (fd, _tmp), os.fdopen(fd, mode, **kwargs) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_with(path: str | Path, writer: Callable[[str], None], *, key: str | None = None) -> None:
    """Call ``writer(tmp_path)`` to produce a file, then atomically move it to ``path``.

    Only for writers that must be given a path and write it with Python's file IO (a failure is then
    an ``OSError`` with an ``errno``, named by :func:`_write_error`). A library writing the file in C/C++ reports a
    full disk its own way, or not at all (``torch.save`` a ``RuntimeError: ... unexpected pos``,
    ``torch.jit.save`` aborts the process, numpy's ``tofile`` an ``OSError`` without ``errno``, a memory map a
    SIGBUS): give its bytes to :func:`atomic_write_bytes` or a file object of :func:`atomic_open` instead
    (:func:`atomic_save_npy` for ``np.save``, :func:`atomic_torch_save` for ``torch.save``).
    """
    with _replacing(_file_target(path, key), key) as (fd, tmp):
        os.close(fd)
        writer(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())


def atomic_write_bytes(path: str | Path, data: bytes | bytearray | memoryview, *, key: str | None = None) -> None:
    """Write ``data`` to ``path`` atomically with Python's file IO (:func:`atomic_open`): a full disk is an
    ``OSError`` naming ``path``. For what a library serialises in memory (``torch.save`` into an ``io.BytesIO``)."""
    with atomic_open(path, "wb", key=key) as fh:
        fh.write(data)


def stage_bytes(path: str | Path, data: bytes | bytearray | memoryview, *, key: str | None = None) -> str:
    """The first half of an atomic write of several files that belong together: ``data`` written to a new
    temporary file beside ``path`` (flushed to disk, with the mode ``path`` is to get: :func:`replacement_mode`),
    ``path`` not touched; returns the temporary file's name. The caller renames every staged file into place with
    :func:`commit_staged` once all are written (a rename needs no free space) and removes what is left with
    :func:`discard_staged` whatever happens. A failed write (a full disk) removes its temporary file and names
    ``path``, as :func:`atomic_write_bytes`; a read-only ``path`` is refused before anything is written."""
    with stage_open(path, key=key) as (fh, tmp):
        fh.write(data)
    return tmp


@contextmanager
def stage_open(path: str | Path, mode: str = "wb", *, key: str | None = None,
               **kwargs: Any) -> Iterator[tuple[IO[Any], str]]:
    """:func:`stage_bytes` for content written piece by piece (a file too big to hold in memory twice): a new
    temporary file beside ``path`` open for writing, and its name. When the block ends the file is flushed to disk
    and left there, with the mode ``path`` is to get, for :func:`commit_staged`; when the block raises it is removed
    and the error of a failed write names ``path``. ``path`` is not touched either way."""
    with _replacing(_file_target(path, key), key, stage=True) as (fd, tmp), os.fdopen(fd, mode, **kwargs) as fh:
        yield fh, tmp
        fh.flush()
        os.fsync(fh.fileno())


def commit_staged(tmp: str, path: str | Path, *, key: str | None = None) -> None:
    """Rename the file :func:`stage_bytes` wrote for ``path`` over it (atomic; an error names ``path``)."""
    path = Path(path)
    try:
        os.replace(tmp, path)
    except OSError as exc:
        raise _write_error(exc, path, key) from None


def discard_staged(tmps: Collection[str]) -> None:
    """Remove staged temporary files (:func:`stage_bytes`) that were not renamed into place."""
    for tmp in tmps:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


class StagedFiles:
    """The files of one folder written together (:func:`stage_bytes`): each is staged under a name (the file's own,
    or another where two stages go to one target) beside its target, none renamed until all are written; then
    :meth:`commit` renames them in the caller's order. Used as a context manager: on leaving it, whatever was not
    renamed (a failed write, a failure between the renames) is removed (:func:`discard_staged`); what was renamed
    stays. The one loop of the writers that stage every file of a folder (an index, a merged embedding job, a
    ``save_pretrained`` folder)."""

    def __init__(self) -> None:
        self._staged: dict[str, tuple[str, Path]] = {}  # name -> (temporary file, target), in staging order

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.discard()

    def write(self, name: str, path: str | Path, data: bytes | bytearray | memoryview) -> None:
        """Stage ``data`` for ``path`` under ``name`` (:func:`stage_bytes`)."""
        self._staged[name] = (stage_bytes(path, data), Path(path))

    @contextmanager
    def open(self, name: str, path: str | Path, mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
        """Stage what the block writes into the file it is given for ``path`` under ``name`` (:func:`stage_open`; a
        block that raises leaves no temporary file)."""
        with stage_open(path, mode, **kwargs) as (fh, tmp):
            self._staged[name] = (tmp, Path(path))
            yield fh

    def commit(self, order: Iterable[str], *, renamed: Callable[[str], object] | None = None,
               absent: Callable[[str], object] | None = None) -> None:
        """Rename the staged files over their targets in ``order`` (:func:`commit_staged`; a name of ``order`` is
        renamed once). ``renamed(name)`` runs right after each rename, before the next; ``absent(name)`` for a name
        of ``order`` that was not staged (an earlier write's file this one does not produce). A failure leaves the
        renames done before it as they are."""
        for name in order:
            if name in self._staged:
                tmp, path = self._staged[name]
                commit_staged(tmp, path)
                del self._staged[name]
                if renamed is not None:
                    renamed(name)
            elif absent is not None:
                absent(name)

    def discard(self) -> None:
        """Remove every staged file not renamed yet (:func:`discard_staged`)."""
        discard_staged([tmp for tmp, _ in self._staged.values()])
        self._staged.clear()


class _WriteOnly:
    """A file object seen only through ``write`` (and ``flush``), which keeps the ``OSError`` of a failed write:
    ``np.save`` then writes its bytes with ``write`` (Python's file IO) instead of ``ndarray.tofile``, whose short
    write on a full disk is an ``OSError`` without ``errno``; ``torch.save`` given it reports a failed write as its own
    ``RuntimeError: ... unexpected pos``, so the caller re-raises the recorded :attr:`error` (with its ``errno``)."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self._fh.flush()


def save_npy(fh: IO[bytes], array: Any) -> None:
    """``np.save(fh, array)`` (the same bytes, no pickle) written with ``fh.write``, so that a write error is the
    ``OSError`` (with ``errno``) of Python's file IO."""
    import numpy as np

    np.save(_WriteOnly(fh), array, allow_pickle=False)  # type: ignore[arg-type]


def atomic_save_npy(path: str | Path, array: Any, *, key: str | None = None) -> None:
    """``np.save`` to ``path`` atomically (:func:`atomic_open`, :func:`save_npy`)."""
    with atomic_open(path, "wb", key=key) as fh:
        save_npy(fh, array)


def atomic_torch_save(path: str | Path, obj: Any, *, key: str | None = None) -> None:
    """``torch.save(obj)`` to ``path`` atomically, streamed into the temporary file with Python's file IO (no
    second copy of the serialised object in memory): a failed write (a full disk) is its ``OSError`` naming
    ``path``, the temporary file removed, as for :func:`atomic_write_bytes`."""
    import torch

    with atomic_open(path, "wb", key=key) as fh:
        writer = _WriteOnly(fh)
        try:
            torch.save(obj, writer)  # type: ignore[arg-type]
        except Exception:
            if writer.error is not None:
                raise writer.error from None
            raise


def atomic_write_text(path: str | Path, text: str, *, key: str | None = None) -> None:
    with atomic_open(path, "w", encoding="utf-8", key=key) as fh:
        fh.write(text)


def atomic_write_json(path: str | Path, obj: Any, *, key: str | None = None,
                      default: Callable[[Any], Any] | None = None) -> None:
    """``obj`` as indented JSON, atomically; every float NaN is written as ``null`` (:func:`nan_to_null`), so the
    file is strict JSON wherever it comes from (``json.dumps`` alone writes a bare ``NaN``). ``default``: as
    ``json.dumps``'s, for values JSON has no type for."""
    atomic_write_text(path, json_text(obj, default=default), key=key)


def json_text(obj: Any, *, default: Callable[[Any], Any] | None = None) -> str:
    """The text :func:`atomic_write_json` writes of ``obj`` (indented, every float NaN as ``null``): for a JSON file
    staged with the files it belongs with (:func:`stage_bytes`)."""
    return json.dumps(nan_to_null(obj), indent=2, sort_keys=False, default=default) + "\n"


def check_name_lengths(path: str | Path, key: str | None = None, what: str = "folder") -> None:
    """An :class:`~dynametric.errors.InputError` naming the first file or folder of ``path`` whose name is longer
    than :data:`NAME_MAX` bytes, which no file system makes or holds (``File name too long``): said of that folder,
    not of the first file a command would read or write in it. ``what``: what ``path`` itself is (``folder`` /
    ``file``). Nothing is created or read."""
    from dynametric.errors import InputError

    parts = Path(path).parts
    for i, part in enumerate(parts):
        size = name_bytes(part)
        if size > NAME_MAX:
            kind = what if i == len(parts) - 1 else "folder"
            raise InputError(f"{kind} name of {size} bytes: a file system takes names of at most {NAME_MAX} bytes "
                             "(File name too long); choose a shorter name", file=Path(*parts[:i + 1]), key=key)


def require_new_folder(path: str | Path, key: str, hint: str) -> Path:
    """Refuse an output folder that would mix this tool's files with others': ``path`` must not exist, or be an
    empty folder. Nothing is created here. (A folder holding this tool's own earlier output is the caller's case.)
    """
    from dynametric.errors import InputError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"exists and is not a folder ({key} names a folder)", file=path, key=key)
    if path.is_dir() and any(path.iterdir()):
        raise InputError(f"output folder is not empty and holds no {hint}; its files are not overwritten: "
                         f"use another {key} or an empty folder", file=path, key=key)
    return path


def nan_to_null(obj: Any) -> Any:
    """``obj`` with every float NaN as ``None`` (JSON's ``null``), at any depth of dicts and lists: what a strict
    JSON reader accepts (``json.dumps`` writes a bare ``NaN``, which is not JSON). Inf is left as it is."""
    if isinstance(obj, dict):
        return {k: nan_to_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_null(v) for v in obj]
    return None if isinstance(obj, float) and obj != obj else obj


def null_to_nan(obj: Any) -> Any:
    """The inverse of :func:`nan_to_null` for metric results read back: every ``None`` as NaN, at any depth."""
    if isinstance(obj, dict):
        return {k: null_to_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [null_to_nan(v) for v in obj]
    return float("nan") if obj is None else obj
