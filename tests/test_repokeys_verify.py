"""`homelab keys verify` against a real git-over-SSH server (a test host): only the key, only the pinned host key."""

from __future__ import annotations

from pathlib import Path

import pytest

from homelab.adapters.sshkeys import fingerprint
from homelab.errors import Aborted, OperationError
from homelab.lab import Lab, load_lab
from homelab.repokeys import core
from homelab.repokeys.hostkeys import FirstContact, HostKeyMismatch
from homelab.repokeys.keys import KeyStore
from tests.harness.cli import run_cli
from tests.harness.gitserver import GitServer, git_server_fixture  # noqa: F401
from tests.harness.labs import lab_data, write_lab

pytestmark = pytest.mark.integration


def _lab(tmp_path: Path, server: GitServer, vms: tuple[str, ...] = ("docker-01",)) -> tuple[Lab, Path]:
    """The lab "example" with these VMs, its config repo on ``server``."""
    data = lab_data(vms=[{"name": vm} for vm in vms], name="example", repo={"url": server.url, "branch": "main"})
    path = write_lab(tmp_path / "lab.yml", data)
    return load_lab(path), path


def _trust_server(server: GitServer):  # type: ignore[no-untyped-def]
    expected = fingerprint(server.host.host_key_pub)
    seen: list[FirstContact] = []

    def confirm(contact: FirstContact) -> bool:
        seen.append(contact)
        return contact.key.fingerprint == expected

    confirm.seen = seen  # type: ignore[attr-defined]
    return confirm


def test_verify_reads_the_repo_with_the_key_and_pins_the_host_key(git_server: GitServer, tmp_path: Path) -> None:
    lab, _ = _lab(tmp_path, git_server)
    key = core.generate(lab).key
    git_server.add_key(key.public_line)
    confirm = _trust_server(git_server)

    result = core.verify(lab, confirm)

    assert result.commit == git_server.head()
    assert result.pin.pinned_now == "confirmed"
    assert len(confirm.seen) == 1  # asked once, with the scanned key
    pinned = KeyStore(lab).known_hosts.read_text().split()
    assert pinned == git_server.known_hosts_line.split()
    # Second run: already pinned, no question.
    again = core.verify(lab, lambda c: pytest.fail("asked again although the key is pinned"))
    assert again.pin.pinned_now is None
    assert again.commit == result.commit


def test_verify_fails_with_another_key(git_server: GitServer, tmp_path: Path) -> None:
    lab, _ = _lab(tmp_path, git_server)
    key = core.generate(lab).key
    other = KeyStore(lab).create("other_ed25519")
    git_server.add_key(other.public_line)

    with pytest.raises(OperationError, match="refused deploy key") as info:
        core.verify(lab, _trust_server(git_server))

    assert key.fingerprint in str(info.value)
    # The other key itself works: the failure is about the key, not the server.
    assert core.can_read(lab, other)


def test_verify_fails_when_the_pinned_host_key_does_not_match(git_server: GitServer, tmp_path: Path) -> None:
    lab, _ = _lab(tmp_path, git_server)
    key = core.generate(lab).key
    git_server.add_key(key.public_line)
    impostor = KeyStore(lab).create("impostor_host_key")  # any ed25519 key that is not the server's
    known_hosts = KeyStore(lab).known_hosts
    wrong = f"{git_server.address} {' '.join(impostor.public_line.split()[:2])}\n"
    known_hosts.write_text(wrong)

    with pytest.raises(HostKeyMismatch, match="does not match the pinned one") as info:
        core.verify(lab, lambda c: True)

    message = str(info.value)
    assert impostor.fingerprint in message  # what was pinned
    assert fingerprint(git_server.host.host_key_pub) in message  # what the server shows now
    assert known_hosts.read_text() == wrong  # never silently re-pinned


def test_first_contact_declined_pins_nothing(git_server: GitServer, tmp_path: Path) -> None:
    lab, _ = _lab(tmp_path, git_server)
    git_server.add_key(core.generate(lab).key.public_line)

    with pytest.raises(Aborted):
        core.verify(lab, lambda c: False)

    assert not KeyStore(lab).known_hosts.exists()


def test_cli_verify_needs_yes_without_a_terminal_then_pins(git_server: GitServer, tmp_path: Path) -> None:
    _, path = _lab(tmp_path, git_server)
    generated = run_cli("keys", "generate", lab=path)
    assert generated.exit_code == 0, generated.output
    git_server.add_key(next(line.strip() for line in generated.output.splitlines() if "ssh-ed25519" in line))
    server_fp = fingerprint(git_server.host.host_key_pub)

    refused = run_cli("keys", "verify", lab=path)
    assert refused.exit_code == 2
    assert server_fp in refused.output
    assert "--yes" in refused.output
    assert not (tmp_path / "state" / "example" / "deploy-keys" / "known_hosts").exists()

    ok = run_cli("keys", "verify", "--yes", lab=path)
    assert ok.exit_code == 0, ok.output
    assert f"Pinned {git_server.address}'s host key {server_fp}" in ok.output
    assert f"main is at {git_server.head()[:12]}" in ok.output


class FakeForge:
    """Our ForgeKeys protocol over the test git server: what a forge's API would do to the repo's keys."""

    name = "FakeForge"

    def __init__(self, server: GitServer):
        self.server = server
        self.ids: dict[int, str] = {}

    def add(self, title: str, public_line: str) -> int:
        self.server.add_key(public_line)
        self.ids[len(self.ids) + 1] = " ".join(public_line.split()[:2])
        return len(self.ids)

    def find(self, public_line: str) -> int | None:
        wanted = " ".join(public_line.split()[:2])
        return next((i for i, k in self.ids.items() if k == wanted and k in self.server.keys), None)

    def remove(self, key_id: int) -> None:
        self.server.remove_key(self.ids[key_id])


def test_cli_rotate_through_the_forge_api(
    git_server: GitServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an API token the new key is added and the old one removed without the user; a lab with no VMs."""
    import homelab.cli.keys as cli_keys
    from homelab.adapters import forge as forgeapi

    lab, path = _lab(tmp_path, git_server, vms=())
    forge = FakeForge(git_server)
    monkeypatch.setattr(forgeapi, "forge_keys", lambda repo: forge)
    monkeypatch.setattr(cli_keys, "POLL_INTERVAL", 0.1)
    old = core.generate(lab).key
    forge.add(old.comment, old.public_line)
    core.verify(lab, lambda contact: True)

    result = run_cli("keys", "rotate", "--yes", "--check-old-revoked", lab=path)

    assert result.exit_code == 0, result.output
    new = KeyStore(lab).require_current()
    assert "The lab has no VMs: only the key itself is rotated." in result.output
    assert "Added it to the repo through the FakeForge API." in result.output
    assert "Removed the old key from the repo through the FakeForge API." in result.output
    assert f"Checked: the old key {old.fingerprint} no longer works." in result.output
    assert git_server.keys == [" ".join(new.public_line.split()[:2])]
    assert core.can_read(lab, new)


def test_cli_rotate_refuses_when_the_lab_has_vms_but_no_hosts_recorded(
    git_server: GitServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lab's VM is not in hosts.json (apply failed, or never ran): rotating would strand it on the old key."""
    from homelab.adapters import forge as forgeapi

    lab, path = _lab(tmp_path, git_server)  # VM docker-01
    forge = FakeForge(git_server)
    monkeypatch.setattr(forgeapi, "forge_keys", lambda repo: forge)
    old = core.generate(lab).key
    forge.add(old.comment, old.public_line)
    core.verify(lab, lambda contact: True)

    result = run_cli("keys", "rotate", "--yes", "--check-old-revoked", lab=path)

    assert result.exit_code == 2, result.output
    assert "no host record for docker-01" in result.output
    assert "homelab apply" in result.output
    assert git_server.keys == [" ".join(old.public_line.split()[:2])]  # nothing added, the old key kept
    assert KeyStore(lab).require_current().fingerprint == old.fingerprint and KeyStore(lab).pending() is None
