"""Cloud images: the distribution's image for each OS, its checksum, and its file name on storage."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse

from homelab.errors import InputError, OperationError
from homelab.lab.models import Template

# Fetches a small text file (a checksum list) over HTTPS; tests pass their own.
Fetch = Callable[[str], str]


@dataclass(frozen=True)
class Image:
    """A cloud image to download: where from, and the checksum Proxmox verifies it against."""

    url: str
    algorithm: str  # sha256 or sha512
    checksum: str  # hex

    @property
    def pinned(self) -> str:
        """The checksum as the lab file writes it: ``sha256:<hex>``."""
        return f"{self.algorithm}:{self.checksum}"


@dataclass(frozen=True)
class DistroImage:
    """A distribution's current cloud image and the checksum list published next to it."""

    url: str
    sums_url: str
    algorithm: str


# The distributions' own "latest" cloud images. A build records the exact checksum it used, so each
# version says what it was built from.
DISTRO_IMAGES: dict[str, DistroImage] = {
    "debian-12": DistroImage(
        "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2",
        "https://cloud.debian.org/images/cloud/bookworm/latest/SHA512SUMS",
        "sha512",
    ),
    "debian-13": DistroImage(
        "https://cloud.debian.org/images/cloud/trixie/latest/debian-13-genericcloud-amd64.qcow2",
        "https://cloud.debian.org/images/cloud/trixie/latest/SHA512SUMS",
        "sha512",
    ),
    "ubuntu-24.04": DistroImage(
        "https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-amd64.img",
        "https://cloud-images.ubuntu.com/noble/current/SHA256SUMS",
        "sha256",
    ),
}


def fetch_text(url: str, timeout: float = 30.0) -> str:
    """GET a small text file over verified HTTPS."""
    import requests

    try:
        response = requests.get(url, timeout=timeout)
        response.raise_for_status()
    except requests.RequestException as exc:
        raise OperationError(f"cannot read the checksum list {url}: {exc}") from None
    return response.text


def checksum_from_list(text: str, filename: str) -> str | None:
    """The hex checksum of ``filename`` in a SHA256SUMS/SHA512SUMS list (``<hex>  [*]<name>`` lines)."""
    for line in text.splitlines():
        match = re.match(r"^([0-9a-fA-F]{64,128})\s+\*?(\S+)$", line.strip())
        if match and match.group(2).rsplit("/", 1)[-1] == filename:
            return match.group(1).lower()
    return None


def image_for(template: Template, fetch: Fetch = fetch_text) -> Image:
    """The image a cloud-image build downloads: the lab's own, else the distribution's for template.os.

    The distribution's checksum comes from the list published beside the image (over HTTPS); Proxmox then
    verifies the download against it.
    """
    if template.image is not None:
        algorithm, _, checksum = template.image.checksum.partition(":")
        return Image(template.image.url, algorithm, checksum)
    distro = DISTRO_IMAGES.get(template.os)
    if distro is None:
        raise InputError(f"template {template.name!r}: no default cloud image for {template.os}; set image.url")
    filename = urlparse(distro.url).path.rsplit("/", 1)[-1]
    listed = checksum_from_list(fetch(distro.sums_url), filename)
    if listed is None:
        raise OperationError(f"{distro.sums_url} lists no checksum for {filename}; set image.url and image.checksum")
    return Image(distro.url, distro.algorithm, listed)


def image_filename(image: Image) -> str:
    """The file name of the image on the import storage: ``<image name>-<first 16 of checksum>.<format>``.

    It carries the checksum: a file of that name was downloaded and verified against that checksum, so a
    later build may reuse it instead of downloading again. Proxmox imports qcow2, raw and vmdk files;
    distribution ``.img`` files are qcow2.
    """
    base = urlparse(image.url).path.rsplit("/", 1)[-1].lower()
    ext = next((e for e in ("raw", "vmdk") if base.endswith("." + e)), "qcow2")
    stem = re.sub(r"\.(qcow2|img|raw|vmdk)$", "", base)
    stem = re.sub(r"[^a-z0-9_.-]+", "-", stem).strip("-.")[:60] or "image"
    return f"{stem}-{image.checksum[:16]}.{ext}"
