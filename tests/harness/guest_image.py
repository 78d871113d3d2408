"""Debian 12 guest disk images for real QEMU guests, built like a stock cloud image and cached.

An image is built from Debian's own packages, without loop mounts:

1. ``debootstrap --variant=minbase`` of bookworm with systemd, openssh-server, cloud-init, ifupdown +
   isc-dhcp-client and the cloud kernel (``linux-image-cloud-amd64``), from the Debian mirror that apt on
   this machine uses (read from its sources at run time);
2. made generic the way a published cloud image is: no SSH host keys, no machine id, cloud-init cleaned, no
   apt lists (``apt-get install`` fails until ``apt-get update``);
3. ``mke2fs -d`` writes the root tree into an ext4 file system that fills the whole disk (no partition
   table, label ``root``), converted to qcow2 with ``qemu-img``. The kernel and initrd are copied out of
   ``/boot``: guests boot them directly (``-kernel``/``-initrd``), so no boot loader is installed.

Two variants exist: :data:`STOCK` has no qemu-guest-agent, as Debian's and Ubuntu's cloud images ship;
:data:`AGENT` adds it (udev starts it when the VM has the agent's virtio port), for tests that are
not about installing it.

What the harness adds to every image (documented because a test may trip over it):

* apt finds its proxy through ``Acquire::http::Proxy-Auto-Detect``: a script prints
  ``http://<default gateway>:3142`` (:data:`APT_PROXY_PORT`). The test network's gateway serves the local
  apt repository there (:mod:`tests.harness.aptrepo`), so ``apt-get update`` and ``apt-get install``
  work in a guest without internet. The sources keep the Debian mirror's URL and suite, with
  ``[trusted=yes]`` since the local repository is not signed by Debian.

Images are cached in :func:`cache_dir` (``$HOMELAB_TEST_CACHE``, else ``/var/cache/homelab-tests``) under
``<variant>-<key>``; the key is a hash of the recipe (packages, suite, size, the files the harness adds,
:data:`RECIPE_VERSION`), so changing any of them builds a new image. A build runs in a temporary folder next
to the cache entry and is renamed into place when complete, under an exclusive ``flock`` so that two test
processes never build the same image twice (the second waits and uses the first one's result).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AGENT",
    "APT_PROXY_PORT",
    "STOCK",
    "GuestImage",
    "build_support",
    "cache_dir",
    "debian_mirror",
    "ensure_image",
    "is_cached",
]

RECIPE_VERSION = 3
"""Bump when the build steps change in a way the recipe below does not show."""

SUITE = "bookworm"
DEBOOTSTRAP_TIMEOUT = 3600
"""Seconds debootstrap may take: about 80 s on an idle machine, over 15 minutes on a busy 2-core one."""
DISK_SIZE = "3G"
APT_PROXY_PORT = 3142
"""Port of the apt proxy on the guest's default gateway (the local repository, see aptrepo.py)."""

BASE_PACKAGES = (
    "systemd-sysv",
    "openssh-server",
    "cloud-init",
    "python3-cffi-backend",  # without it cloud-init stays unconfigured (python3-cryptography needs it)
    "ifupdown",
    "netbase",
    "isc-dhcp-client",
    "iproute2",
    "dbus",  # systemd-logind needs it: the ACPI power button and `shutdown +0` (the agent's guest-shutdown)
    "sudo",
    "ca-certificates",
    "linux-image-cloud-amd64",
)
"""What a stock Debian cloud image has that matters here (not its whole package list)."""

STOCK = "stock"
AGENT = "agent"
VARIANTS: dict[str, tuple[str, ...]] = {STOCK: (), AGENT: ("qemu-guest-agent",)}

_TOOLS = ("debootstrap", "mke2fs", "qemu-img", "chroot", "apt-get")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

_PROXY_SCRIPT = """#!/bin/sh
# homelab test harness: apt's proxy is the local apt repository on the default gateway, port {port}.
gw=$(ip -4 route show default 2>/dev/null | awk '/^default/ {{ print $3; exit }}')
if [ -n "$gw" ]; then echo "http://$gw:{port}"; else echo DIRECT; fi
"""

_APT_CONF = 'Acquire::http::Proxy-Auto-Detect "/usr/local/lib/homelab-test/apt-proxy";\n'

_FSTAB = "LABEL=root / ext4 rw,discard,errors=remount-ro 0 1\n"


def cache_dir() -> Path:
    """Where images (and the local apt repository) are cached between runs."""
    return Path(os.environ.get("HOMELAB_TEST_CACHE") or "/var/cache/homelab-tests")


@functools.cache
def debian_mirror() -> str | None:
    """The Debian mirror apt uses on this machine for the main archive, from its sources (None if none)."""
    candidates: list[tuple[str, list[str]]] = []
    sources = Path("/etc/apt")
    files = [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(
                    (m.group(1).lower(), m.group(2).strip())
                    for m in re.finditer(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M)
                )
                if fields.get("enabled", "yes").lower() == "no" or "deb" not in fields.get("types", "").split():
                    continue
                for uri in fields.get("uris", "").split():
                    candidates.append((uri, fields.get("suites", "").split()))
        elif path.name == "sources.list" or path.suffix == ".list":
            for line in text.splitlines():
                match = re.match(r"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
                if match:
                    candidates.append((match.group(1), [match.group(2)]))
    for uri, suites in candidates:
        if uri.startswith("http") and any(s in (SUITE, "stable") for s in suites):
            return uri.rstrip("/")
    return None


@functools.cache
def build_support() -> str | None:
    """None if images can be built (or are cached) here, else the reason (for ``pytest.skip``)."""
    if os.geteuid() != 0:
        return "building guest images needs root (debootstrap, chroot)"
    for tool in _TOOLS:
        if shutil.which(tool) is None:
            return f"building guest images needs `{tool}`: run tests/harness/guest-deps.sh"
    if debian_mirror() is None:
        return f"no Debian {SUITE} mirror in this machine's apt sources"
    return None


@dataclass(frozen=True)
class GuestImage:
    """A built image in the cache.

    Attributes:
        variant: :data:`STOCK` or :data:`AGENT`.
        key: the recipe hash (first 16 hex digits) naming the cache entry.
        path: the cache entry's folder.
        disk: the qcow2 disk (ext4 over the whole disk, label ``root``); never written to: guests run on
            overlays backed by it.
        kernel: the kernel to boot with ``-kernel``.
        initrd: its initrd.
        sha512: hex SHA-512 of ``disk`` (what a download is verified against).
        packages: the packages the recipe names (the image has their dependencies too).
        manifest: what the build recorded (``build_seconds``, installed package versions, ...).
    """

    variant: str
    key: str
    path: Path
    disk: Path
    kernel: Path
    initrd: Path
    sha512: str
    packages: tuple[str, ...]
    manifest: dict[str, object]

    @property
    def has_agent(self) -> bool:
        """Whether qemu-guest-agent is installed (and enabled) in the image."""
        return "qemu-guest-agent" in self.packages

    @property
    def installed(self) -> dict[str, str]:
        """Package -> version of everything installed in the image."""
        return dict(self.manifest.get("installed", {}))  # type: ignore[arg-type]

    @property
    def dpkg_status(self) -> Path:
        """A copy of the image's ``/var/lib/dpkg/status`` (what apt would see inside the guest)."""
        return self.path / "dpkg-status"


def recipe(variant: str) -> dict[str, object]:
    """Everything that decides an image's content; its hash is the cache key."""
    return {
        "version": RECIPE_VERSION,
        "suite": SUITE,
        "variant": "minbase",
        "packages": sorted(BASE_PACKAGES + VARIANTS[variant]),
        "disk_size": DISK_SIZE,
        "mirror": debian_mirror(),
        "apt_proxy_port": APT_PROXY_PORT,
        "files": {
            "proxy": _PROXY_SCRIPT.format(port=APT_PROXY_PORT),
            "apt.conf": _APT_CONF,
            "fstab": _FSTAB,
            "locale.gen": "en_US.UTF-8 UTF-8",
        },
        "extra_install": "dpkg -i in chroot over the stock tree",
    }


def image_key(variant: str) -> str:
    """The cache key of a variant: the first 16 hex digits of the recipe's SHA-256."""
    blob = json.dumps(recipe(variant), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _run(argv: Sequence[str], log: Path, timeout: float = 900) -> None:
    """Run a build command, appending its output to ``log``; raise with the log's tail on failure."""
    with open(log, "a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.run(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False
        )
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"image build step failed ({proc.returncode}): {' '.join(argv)}\n{tail}")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` (made if missing), held for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _load(variant: str, key: str, path: Path) -> GuestImage:
    manifest = json.loads((path / "manifest.json").read_text())
    return GuestImage(
        variant=variant,
        key=key,
        path=path,
        disk=path / "disk.qcow2",
        kernel=path / "vmlinuz",
        initrd=path / "initrd.img",
        sha512=manifest["sha512"],
        packages=tuple(manifest["packages"]),
        manifest=manifest,
    )


def is_cached(variant: str = STOCK, *, root: Path | None = None) -> bool:
    """Whether the cache holds the image of ``variant`` for the current recipe (no build needed)."""
    base = Path(root) if root is not None else cache_dir()
    return (base / f"{variant}-{image_key(variant)}" / "manifest.json").is_file()


def ensure_image(variant: str = STOCK, *, root: Path | None = None) -> GuestImage:
    """The image of ``variant`` from the cache, built first if the cache has none for the current recipe.

    Safe to call from several processes at once: one builds, the others wait for it. A build makes every
    variant that is missing from one debootstrap run (the agent variant is the stock tree plus
    qemu-guest-agent, installed with dpkg). Raises ``RuntimeError`` (with the build log's tail) if the
    build fails; nothing half-built is left in the cache.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown image variant {variant!r}; one of {sorted(VARIANTS)}")
    base = Path(root) if root is not None else cache_dir()
    final = base / f"{variant}-{image_key(variant)}"
    if not (final / "manifest.json").is_file():
        with _locked(base / ".images.lock"):
            missing = [v for v in VARIANTS if not (base / f"{v}-{image_key(v)}" / "manifest.json").is_file()]
            if missing:
                _build(missing, base)
    return _load(variant, image_key(variant), final)


def _prune(base: Path, variant: str, keep: Path) -> None:
    """Remove the variant's images of older recipes (a guest still running on one keeps its open file)."""
    for old in base.glob(f"{variant}-*"):
        if old != keep and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)


class PrivateApt:
    """apt-get with its own configuration, lists and cache under ``root`` (the machine's apt is untouched).

    Its sources are the guests' suite on the machine's Debian mirror, checked with Debian's keyring; the
    dpkg status it resolves against is passed per call (an image's, so only what it lacks is fetched).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("etc/apt.conf.d", "etc/preferences.d", "etc/sources.list.d", "lists/partial", "archives/partial"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "etc/sources.list").write_text(f"deb [signed-by={KEYRING}] {debian_mirror()} {SUITE} main\n")
        (root / "apt.conf").write_text(
            "\n".join(
                [
                    f'Dir::Etc "{root}/etc";',
                    f'Dir::Etc::Parts "{root}/etc/apt.conf.d";',
                    f'Dir::State "{root}";',
                    f'Dir::State::Lists "{root}/lists";',
                    f'Dir::Cache "{root}";',
                    f'Dir::Cache::Archives "{root}/archives";',
                    'APT::Architecture "amd64";',
                    'APT::Architectures { "amd64"; };',
                    'APT::Install-Recommends "false";',
                    'Acquire::Languages "none";',
                    'Debug::NoLocking "true";',
                    "",
                ]
            )
        )
        self._updated = False

    @property
    def archives(self) -> Path:
        """Where downloaded packages land."""
        return self.root / "archives"

    def run(self, status: Path, *args: str, timeout: float = 900) -> str:
        """``apt-get ARGS`` resolving against the dpkg ``status`` file; returns its output."""
        env = dict(os.environ, APT_CONFIG=str(self.root / "apt.conf"), DEBIAN_FRONTEND="noninteractive", LC_ALL="C")
        argv = ["apt-get", "-q", "-o", f"Dir::State::status={status}", *args]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr}")
        return proc.stdout

    def download(self, status: Path, packages: Sequence[str]) -> list[Path]:
        """Download what installing ``packages`` on a system with this dpkg ``status`` needs; the .deb paths."""
        if not self._updated:
            self.run(status, "update")
            self._updated = True
        for old in self.archives.glob("*.deb"):
            old.unlink()
        self.run(status, "install", "--download-only", "-y", *packages)
        return sorted(self.archives.glob("*.deb"))


def _build(variants: Sequence[str], base: Path) -> None:
    """Build ``variants`` from one debootstrap run, each in a temporary folder renamed into place."""
    reason = build_support()
    if reason is not None:
        raise RuntimeError(reason)
    mirror = debian_mirror()
    assert mirror is not None
    base.mkdir(parents=True, exist_ok=True)
    debs = base / "debootstrap-debs"
    debs.mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=base))
    log = scratch / "build.log"
    started = time.monotonic()
    try:
        tree = scratch / "root"
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                "--components=main",
                f"--cache-dir={debs}",
                SUITE,
                str(tree),
                mirror,
            ],
            log,
            timeout=DEBOOTSTRAP_TIMEOUT,
        )
        _prepare(tree, log)
        bootstrapped = time.monotonic() - started
        for variant in sorted(variants, key=lambda v: len(VARIANTS[v])):
            began = time.monotonic()
            extra = VARIANTS[variant]
            target = tree
            if extra:
                target = scratch / f"root-{variant}"
                _run(["cp", "-a", "--reflink=auto", str(tree), str(target)], log)
                _dpkg_install(target, extra, scratch, log)
            _finish(variant, target, scratch, base, log, bootstrapped + time.monotonic() - began)
            if target != tree:
                shutil.rmtree(target, ignore_errors=True)
    finally:
        _unmount_under(scratch)
        shutil.rmtree(scratch, ignore_errors=True)


def _unmount_under(folder: Path) -> None:
    """Unmount whatever is mounted below ``folder``, deepest first: a debootstrap killed by its timeout leaves
    the target's /proc (and maybe /sys or /dev) mounted, and removing the tree must never walk into those."""
    prefix = str(folder.resolve()) + "/"
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        points = [line.split()[1].replace("\\040", " ") for line in mounts]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _dpkg_install(tree: Path, packages: Sequence[str], scratch: Path, log: Path) -> None:
    """Install ``packages`` and what they need into ``tree`` with dpkg (in a chroot; nothing is started)."""
    apt = PrivateApt(scratch / "apt")
    debs = apt.download(tree / "var/lib/dpkg/status", packages)
    inside = tree / "tmp/homelab-debs"
    inside.mkdir()
    for deb in debs:
        shutil.copy2(deb, inside / deb.name)
    # No service may start inside the chroot.
    policy = tree / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    try:
        _run(["chroot", str(tree), "sh", "-c", "dpkg -i /tmp/homelab-debs/*.deb"], log)
    finally:
        policy.unlink()
        shutil.rmtree(inside, ignore_errors=True)


def _finish(variant: str, tree: Path, scratch: Path, base: Path, log: Path, seconds: float) -> None:
    """Generalise ``tree``, make its disk, and rename the result to ``<variant>-<key>``."""
    key = image_key(variant)
    final = base / f"{variant}-{key}"
    work = Path(tempfile.mkdtemp(prefix=f".build-{variant}-", dir=base))
    began = time.monotonic()
    try:
        _generalise(tree, debian_mirror() or "")
        installed = _installed(tree)
        shutil.copy2(tree / "var/lib/dpkg/status", work / "dpkg-status")
        _copy_boot(tree, work)
        raw = work / "root.raw"
        _run(["mke2fs", "-q", "-t", "ext4", "-d", str(tree), "-L", "root", str(raw), DISK_SIZE], log)
        _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(work / "disk.qcow2")], log)
        raw.unlink()
        digest = hashlib.sha512()
        with open(work / "disk.qcow2", "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        shutil.copy2(log, work / "build.log")
        manifest = {
            "variant": variant,
            "key": key,
            "recipe": recipe(variant),
            "packages": list(BASE_PACKAGES + VARIANTS[variant]),
            "installed": installed,
            "sha512": digest.hexdigest(),
            "build_seconds": round(seconds + time.monotonic() - began, 1),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if final.exists():  # a manifest-less leftover of a crashed rename: not an image
            shutil.rmtree(final)
        os.rename(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    _prune(base, variant, keep=final)


def _prepare(tree: Path, log: Path) -> None:
    """Settings a published Debian cloud image has, made before the variants split."""
    # cloud-init's locale module runs `locale-gen` (which only builds what /etc/locale.gen enables) and
    # then `update-locale LANG=en_US.UTF-8`; with nothing enabled that fails and cloud-init ends in error.
    gen = tree / "etc/locale.gen"
    text = gen.read_text() if gen.exists() else ""
    if not re.search(r"^en_US.UTF-8 UTF-8", text, re.M):
        gen.write_text(text + "en_US.UTF-8 UTF-8\n")
    # ... generated once here, with LANG set, as a published image comes: cloud-init then finds the locale it
    # wants already in place and does not run locale-gen on every first boot (about 100 s under TCG).
    _run(["chroot", str(tree), "locale-gen"], log)
    (tree / "etc/default/locale").write_text("LANG=en_US.UTF-8\n")


def _generalise(tree: Path, mirror: str) -> None:
    """Make the tree a generic cloud image: no identity, no apt lists, harness apt proxy, fstab."""
    for key in tree.glob("etc/ssh/ssh_host_*"):
        key.unlink()
    (tree / "etc/machine-id").write_text("")
    with contextlib.suppress(FileNotFoundError):
        (tree / "var/lib/dbus/machine-id").unlink()
    (tree / "etc/hostname").write_text("localhost\n")
    (tree / "etc/fstab").write_text(_FSTAB)
    (tree / "etc/apt/sources.list").write_text(f"deb [trusted=yes] {mirror} {SUITE} main\n")
    helper = tree / "usr/local/lib/homelab-test/apt-proxy"
    helper.parent.mkdir(parents=True, exist_ok=True)
    helper.write_text(_PROXY_SCRIPT.format(port=APT_PROXY_PORT))
    helper.chmod(0o755)
    (tree / "etc/apt/apt.conf.d/01homelab-test-proxy").write_text(_APT_CONF)
    # Clean cloud-init state and logs, as a published image is.
    for sub in ("var/lib/cloud",):
        shutil.rmtree(tree / sub, ignore_errors=True)
        (tree / sub).mkdir(parents=True)
    for logfile in tree.glob("var/log/cloud-init*"):
        logfile.unlink()
    # No apt lists and no package cache: `apt-get install` needs an `apt-get update` first.
    for sub in ("var/lib/apt/lists", "var/cache/apt/archives"):
        for item in (tree / sub).glob("*"):
            if item.is_file():
                item.unlink()
    for item in (tree / "var/cache/apt").glob("*.bin"):
        item.unlink()


def _installed(tree: Path) -> dict[str, str]:
    proc = subprocess.run(
        ["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W", "-f", "${Package} ${Version}\\n"],
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line)


def _copy_boot(tree: Path, work: Path) -> None:
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    initrds = sorted((tree / "boot").glob("initrd.img-*"))
    if not kernels or not initrds:
        raise RuntimeError(f"no kernel or initrd in {tree / 'boot'}")
    shutil.copy2(kernels[-1], work / "vmlinuz")
    shutil.copy2(initrds[-1], work / "initrd.img")
