"""A local apt repository for real guests that have no internet, served on the test network.

Building (:func:`ensure_repo`, cached next to the images, keyed by the image's key and the package list):

1. a private apt state (its own sources, lists and cache; the machine's apt state is never touched) reads
   the Debian mirror this machine's apt uses, for the guests' suite (bookworm, main);
2. ``apt-get install --download-only`` against the *image's* dpkg status (``Dir::State::status``) downloads
   exactly the packages the image lacks to install the wanted ones, with all their dependencies (nothing
   guessed by hand, nothing the image already has);
3. each is rebuilt with zstd instead of xz (:data:`COMPRESSION`, same contents: decoding xz is slow in an
   emulated guest);
4. ``dpkg-scanpackages`` indexes them and ``apt-ftparchive release`` writes a ``Release`` for the suite, as
   ``dists/bookworm/main/binary-amd64/Packages{,.gz}`` + ``pool/main/*.deb``. It is not signed: the guest
   images list the source with ``[trusted=yes]`` (see :mod:`tests.harness.guest_image`).

Serving (:class:`AptRepoServer`): an HTTP server on the lab network's gateway, port 3142, that the images'
apt uses as its proxy (``Acquire::http::Proxy-Auto-Detect`` prints the default gateway). A proxied request
names the mirror's URL; the server answers any ``.../dists/...`` or ``.../pool/...`` path from the local
repository, whatever the host, and 404 for everything else (so apt sees a mirror that carries only these
packages, as with no internet anything else would fail).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tests.harness.guest_image import (
    APT_PROXY_PORT,
    KEYRING,
    SUITE,
    GuestImage,
    PrivateApt,
    _locked,
    cache_dir,
    debian_mirror,
)

__all__ = ["DEPLOY_PACKAGES", "AptRepo", "AptRepoServer", "ensure_repo", "repo_support", "serve_repo"]

RECIPE_VERSION = 2

COMPRESSION = "zstd"
"""How the repository's packages are compressed. Debian ships xz, whose decoding is most of dpkg's unpacking
time in a TCG-emulated guest (71 s for containerd and 97 s for docker.io in one measured install, out of 741 s);
the files inside are the same whatever the compression, and the guest's dpkg (1.21.22, bookworm) reads zstd."""

DEPLOY_PACKAGES = (
    "qemu-guest-agent",
    "docker.io",
    "docker-compose",
    "apparmor",  # the docker role installs it with Debian's docker.io
    "curl",
    "git",
    "python3",
    "sudo",
    "ca-certificates",
    "cloud-init",
    # Ansible's apt module needs it (the docker role); without it the module installs it first (not in check mode)
    "python3-apt",
)
"""What homelab's bake playbook and docker role install (templates/ansible/bake.yml, the docker role)."""


def repo_support() -> str | None:
    """None if a repository can be built here, else the reason."""
    if os.geteuid() != 0:
        return "building the local apt repository needs root"
    for tool in ("apt-get", "dpkg-scanpackages", "apt-ftparchive"):
        if shutil.which(tool) is None:
            return f"the local apt repository needs `{tool}`: run tests/harness/guest-deps.sh"
    if debian_mirror() is None:
        return f"no Debian {SUITE} mirror in this machine's apt sources"
    if not os.path.exists(KEYRING):
        return f"{KEYRING} is missing (Debian package debian-archive-keyring)"
    return None


class AptRepo:
    """A built repository: ``path`` holds ``dists/`` and ``pool/``; ``packages`` maps name -> version."""

    def __init__(self, path: Path) -> None:
        self.path = path
        manifest = json.loads((path / "manifest.json").read_text())
        self.packages: dict[str, str] = manifest["packages"]
        self.manifest = manifest

    def __repr__(self) -> str:
        return f"AptRepo({str(self.path)!r}, {len(self.packages)} packages)"


def _key(image: GuestImage, packages: Sequence[str]) -> str:
    blob = json.dumps(
        {"version": RECIPE_VERSION, "image": image.key, "packages": sorted(packages), "mirror": debian_mirror()},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ensure_repo(image: GuestImage, packages: Sequence[str] = DEPLOY_PACKAGES, *, root: Path | None = None) -> AptRepo:
    """The repository of ``packages`` for guests of ``image``, from the cache or built now (locked, atomic)."""
    base = Path(root) if root is not None else cache_dir()
    final = base / f"aptrepo-{image.variant}-{_key(image, packages)}"
    if not (final / "manifest.json").is_file():
        with _locked(base / ".aptrepo.lock"):
            if not (final / "manifest.json").is_file():
                _build(image, packages, base, final)
                for old in base.glob(f"aptrepo-{image.variant}-*"):
                    if old != final:
                        shutil.rmtree(old, ignore_errors=True)
    return AptRepo(final)


def _build(image: GuestImage, packages: Sequence[str], base: Path, final: Path) -> None:
    reason = repo_support()
    if reason is not None:
        raise RuntimeError(reason)
    started = time.monotonic()
    base.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".build-aptrepo-", dir=base))
    try:
        apt = PrivateApt(work / "apt")
        debs = apt.download(image.dpkg_status, packages)
        pool = work / "repo/pool/main"
        pool.mkdir(parents=True)
        for deb in debs:
            shutil.move(str(deb), pool / deb.name)
        _recompress(sorted(pool.glob("*.deb")), work / "unpacked")
        repo = work / "repo"
        index = repo / f"dists/{SUITE}/main/binary-amd64"
        index.mkdir(parents=True)
        scanned = subprocess.run(
            ["dpkg-scanpackages", "--multiversion", "pool"], cwd=repo, capture_output=True, check=True
        ).stdout
        (index / "Packages").write_bytes(scanned)
        with gzip.open(index / "Packages.gz", "wb") as fh:
            fh.write(scanned)
        release = subprocess.run(
            [
                "apt-ftparchive",
                "-o",
                f"APT::FTPArchive::Release::Suite={SUITE}",
                "-o",
                f"APT::FTPArchive::Release::Codename={SUITE}",
                "-o",
                "APT::FTPArchive::Release::Components=main",
                "-o",
                "APT::FTPArchive::Release::Architectures=amd64",
                "-o",
                "APT::FTPArchive::Release::Origin=homelab-tests",
                "release",
                f"dists/{SUITE}",
            ],
            cwd=repo,
            capture_output=True,
            check=True,
        ).stdout
        (repo / f"dists/{SUITE}/Release").write_bytes(release)
        versions = {}
        for stanza in scanned.decode().split("\n\n"):
            fields = dict(re.findall(r"^(Package|Version): (\S+)$", stanza, re.M))
            if "Package" in fields:
                versions[fields["Package"]] = fields.get("Version", "")
        for name in packages:
            if name not in versions and name not in image.installed:
                raise RuntimeError(f"{name} is neither in the image nor in the repository built for it")
        manifest = {
            "image": image.key,
            "wanted": list(packages),
            "packages": versions,
            "build_seconds": round(time.monotonic() - started, 1),
        }
        (repo / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.rename(repo, final)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _recompress(debs: Sequence[Path], scratch: Path) -> None:
    """Rebuild each package with :data:`COMPRESSION` in place: the same control files and the same files with the
    same owners and modes (``dpkg-deb -R`` as root keeps them), another compressor."""
    scratch.mkdir(parents=True, exist_ok=True)
    for deb in debs:
        tree = scratch / deb.stem
        subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True, capture_output=True)
        rebuilt = deb.with_suffix(".rebuilt")
        subprocess.run(
            ["dpkg-deb", "--build", f"-Z{COMPRESSION}", "--nocheck", str(tree), str(rebuilt)],
            check=True,
            capture_output=True,
        )
        os.replace(rebuilt, deb)
        shutil.rmtree(tree)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers proxied (absolute-URI) and plain requests for ``dists/`` and ``pool/`` from the repository."""

    server: AptRepoServer  # type: ignore[assignment]

    def _resolve(self) -> Path | None:
        path = unquote(urlsplit(self.path).path)  # apt quotes "+" and the "%3a" of an epoch in file names
        match = re.search(r"/((?:dists|pool)/.+)$", path)
        if not match or ".." in match.group(1).split("/"):
            return None
        target = self.server.repo.path / match.group(1)
        return target if target.is_file() else None

    def _answer(self, body: bool) -> None:
        target = self._resolve()
        self.server.requests.append((self.command, self.path, 200 if target else 404))
        if target is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(target.stat().st_size))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if body:
            with open(target, "rb") as fh:
                shutil.copyfileobj(fh, self.wfile)

    def do_GET(self) -> None:
        self._answer(True)

    def do_HEAD(self) -> None:
        self._answer(False)

    def log_message(self, format: str, *args: object) -> None:
        pass


class AptRepoServer(http.server.ThreadingHTTPServer):
    """The repository over HTTP at ``address:port``; ``requests`` lists (method, URL, status) served."""

    daemon_threads = True

    def __init__(self, repo: AptRepo, address: str, port: int = APT_PROXY_PORT) -> None:
        super().__init__((address, port), _Handler)
        self.repo = repo
        self.requests: list[tuple[str, str, int]] = []
        self._thread = threading.Thread(target=self.serve_forever, name="aptrepo", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> AptRepoServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


@contextlib.contextmanager
def serve_repo(repo: AptRepo, address: str, port: int = APT_PROXY_PORT) -> Iterator[AptRepoServer]:
    """Context manager: the repository served on ``address:port`` until the block ends."""
    server = AptRepoServer(repo, address, port).start()
    try:
        yield server
    finally:
        server.stop()
