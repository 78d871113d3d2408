#!/usr/bin/env bash
# Install the Debian packages the real-guest test harness needs (tests/harness/guest_image.py,
# realvm.py, aptrepo.py): QEMU (TCG), qemu-img, debootstrap, an ISO writer for NoCloud seeds,
# e2fsprogs for `mke2fs -d`, and dpkg-dev + apt-utils for indexing the local apt repository.
# Idempotent: packages already installed are skipped, and `apt-get update` runs at most once.
# Without root or apt-get it does nothing; the tests that need these tools skip and say why.
set -euo pipefail

PACKAGES=(
    qemu-system-x86 qemu-utils debootstrap genisoimage e2fsprogs dpkg-dev apt-utils
    iproute2 openssh-client ca-certificates
)

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "guest-deps: not root or no apt-get; skipping (the real-guest tests will skip)" >&2
    exit 0
fi

need=()
for pkg in "${PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ "${#need[@]}" -eq 0 ]; then
    exit 0
fi
echo "guest-deps: apt-get install ${need[*]}"
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
