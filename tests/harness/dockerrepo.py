"""A local, signed stand-in for Docker's apt repository (download.docker.com cannot be reached here).

:func:`build_repo` lays out what Docker publishes for Debian 12, under ``<root>/linux/debian``:
``gpg`` (the signing key, ASCII-armored), ``dists/bookworm/{Release,InRelease,Release.gpg}`` and
``dists/bookworm/stable/binary-amd64/Packages{,.gz}``, ``pool/stable/*.deb``. The packages carry Docker's names
and a Docker-style version (docker-ce, docker-ce-cli, containerd.io, docker-buildx-plugin,
docker-compose-plugin) but no Docker code: each is a small ``dpkg-deb`` package that depends on Debian's own
packages (containerd, runc, docker-compose; see ``PACKAGES``: not docker.io, which conflicts with docker-ce)
and holds one README saying it is a stand-in. The Release file is
signed with a throwaway ed25519 key made for the run (``gpg`` in a private GNUPGHOME, removed afterwards).

:class:`RepoServer` serves the folder over HTTP on an address of the test network (the machine's end of a test
host's veth pair) and records the paths asked for.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.server
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
VERSION = "5:29.0.0-1~debian.12~bookworm"  # the shape of Docker's own versions (epoch 5)
# Docker's package -> what its stand-in depends on. Debian's docker.io conflicts with docker-ce and docker-ce-cli
# (as Docker's packages conflict with it), so the engine's stand-in depends on what docker.io itself needs
# (containerd through containerd.io, runc, tini, iptables) and the CLI's on nothing: installing them replaces
# docker.io, as switching a VM to Docker's repository does.
PACKAGES = {
    "docker-ce": "containerd.io, docker-ce-cli, runc, tini, iptables",
    "docker-ce-cli": "",
    "containerd.io": "containerd",
    "docker-buildx-plugin": "",
    "docker-compose-plugin": "docker-compose",
}
TOOLS = ("dpkg-deb", "apt-ftparchive", "gpg", "gpgconf")


def repo_support() -> str | None:
    """None if the stand-in can be built and installed here (offline), else the reason."""
    for tool in TOOLS:
        if shutil.which(tool) is None:
            return f"the signed stand-in repository needs `{tool}` (Debian packages dpkg, apt-utils, gpg)"
    debian_packages = {d.strip() for deps in PACKAGES.values() for d in deps.split(",") if d.strip()} - set(PACKAGES)
    for debian in sorted(debian_packages):
        status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", debian], capture_output=True, text=True)
        if status.stdout.strip() != "install ok installed":
            return f"the stand-in packages depend on Debian's {debian}, which is not installed (offline: no download)"
    return None


@dataclass(frozen=True)
class SignedRepo:
    """A built repository: ``root`` is served as the web root; ``fingerprint`` is the signing key's."""

    root: Path
    fingerprint: str

    @property
    def key(self) -> str:
        return (self.root / "linux" / "debian" / "gpg").read_text()


def _deb(name: str, depends: str, out: Path) -> Path:
    tree = out / f"{name}-tree"
    doc = tree / "usr" / "share" / "doc" / name
    doc.mkdir(parents=True)
    (doc / "README.homelab-test").write_text(
        f"A stand-in for Docker's {name} package, built by homelab's tests: it holds no Docker code and "
        f"depends on Debian's {depends or 'nothing'}.\n"
    )
    control = [
        f"Package: {name}",
        f"Version: {VERSION}",
        "Architecture: amd64",
        "Maintainer: homelab tests <tests@homelab.invalid>",
        *([f"Depends: {depends}"] if depends else []),
        f"Description: stand-in for Docker's {name} (homelab tests)",
        " Named and versioned like Docker's package; installs Debian's own instead.",
    ]
    (tree / "DEBIAN").mkdir()
    (tree / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
    deb = out / f"{name}_{VERSION.split(':', 1)[1]}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)], check=True, capture_output=True)
    shutil.rmtree(tree)
    return deb


@contextlib.contextmanager
def _gnupg() -> Iterator[dict[str, str]]:
    """A private GNUPGHOME (short path: gpg-agent's socket must fit a unix socket path); its agent killed after."""
    home = tempfile.mkdtemp(prefix="hl-gpg-")
    env = {**os.environ, "GNUPGHOME": home}
    try:
        yield env
    finally:
        subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


def build_repo(root: Path) -> SignedRepo:
    """Build the signed stand-in under ``root`` (see the module doc)."""
    base = root / "linux" / "debian"
    pool = base / "pool" / "stable"
    pool.mkdir(parents=True)
    for name, depends in PACKAGES.items():
        _deb(name, depends, pool)
    index = base / "dists" / SUITE / "stable" / "binary-amd64"
    index.mkdir(parents=True)
    scanned = subprocess.run(["apt-ftparchive", "packages", "pool"], cwd=base, capture_output=True, check=True).stdout
    (index / "Packages").write_bytes(scanned)
    with gzip.open(index / "Packages.gz", "wb") as fh:
        fh.write(scanned)
    options = {"Origin": "Docker", "Label": "Docker CE", "Suite": SUITE, "Codename": SUITE}
    options.update({"Components": "stable", "Architectures": "amd64"})
    argv = ["apt-ftparchive"]
    for key, value in options.items():
        argv += ["-o", f"APT::FTPArchive::Release::{key}={value}"]
    release = subprocess.run([*argv, "release", f"dists/{SUITE}"], cwd=base, capture_output=True, check=True).stdout
    dists = base / "dists" / SUITE
    (dists / "Release").write_bytes(release)
    with _gnupg() as env:

        def gpg(*args: str) -> str:
            argv = ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "", *args]
            return subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout

        gpg("--quick-gen-key", "homelab test apt repository <apt@homelab.invalid>", "ed25519", "sign", "1d")
        listing = gpg("--with-colons", "--list-secret-keys")
        fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        (base / "gpg").write_text(gpg("--armor", "--export", fingerprint))
        release = str(dists / "Release")
        gpg("--yes", "--local-user", fingerprint, "--clearsign", "-o", str(dists / "InRelease"), release)
        gpg("--yes", "--local-user", fingerprint, "--armor", "--detach-sign", "-o", release + ".gpg", release)
    return SignedRepo(root, fingerprint)


class RepoServer(http.server.ThreadingHTTPServer):
    """``repo.root`` over HTTP at ``address:port``; ``paths`` lists the paths asked for, in order."""

    daemon_threads = True

    def __init__(self, repo: SignedRepo, address: str, port: int = 0) -> None:
        super().__init__((address, port), functools.partial(_Handler, directory=str(repo.root)))
        self.repo = repo
        self.paths: list[str] = []
        self._thread = threading.Thread(target=self.serve_forever, name="docker-repo", daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> RepoServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
        self.server_close()


class _Handler(http.server.SimpleHTTPRequestHandler):
    server: RepoServer  # type: ignore[assignment]

    def send_head(self):  # type: ignore[no-untyped-def]
        self.server.paths.append(self.path)
        return super().send_head()

    def log_message(self, format: str, *args: object) -> None:
        pass
