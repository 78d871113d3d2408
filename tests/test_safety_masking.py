"""Secrets masked in every message, text that comes back from servers included."""

from __future__ import annotations

from pathlib import Path

import pytest

from homelab.demo.launcher import FakeProxmox
from homelab.masking import mask, register
from tests.harness.cli import run_cli
from tests.harness.labs import lab_data, write_lab


def test_registered_secrets_and_credential_shapes_are_masked() -> None:
    register("s3cr3t-value-123", "abc")  # too short to be worth masking: left
    assert mask("token s3cr3t-value-123 here, abc") == "token *** here, abc"
    for echoed in (
        "Authorization: PVEAPIToken=root@pam!ci=0f0e-unknown",
        '{"headers": {"Authorization": "PVEAPIToken root@pam!ci=0f0e-unknown"}}',
        "authorization=PVEAPIToken=root@pam!ci=0f0e-unknown&x=1",
    ):
        assert "0f0e" not in mask(echoed) and "***" in mask(echoed), mask(echoed)
    assert mask("Cookie: PVEAuthCookie=PVE:root@pam:6A1B::sig; path=/") == "Cookie: PVEAuthCookie=***; path=/"
    assert mask("no password for root@pam: set HOMELAB_PROXMOX_PASSWORD") == (
        "no password for root@pam: set HOMELAB_PROXMOX_PASSWORD"
    )


ECHOES = {
    "header": "bad request from {id}: headers were Authorization: PVEAPIToken={id}={secret}",
    "bare secret": "invalid token '{secret}'",
    "json body": '{{"request": {{"headers": {{"Authorization": "PVEAPIToken={id}={secret}"}}}}}}',
}


@pytest.mark.fake_pve(time_scale=0, agent_delay=0)
@pytest.mark.parametrize("echo", list(ECHOES))
@pytest.mark.parametrize(
    ("method", "path", "command"), [("GET", "/cluster/resources", "plan"), ("POST", "/clone", "apply")]
)
def test_a_server_that_echoes_the_token_never_gets_it_on_the_terminal(
    tmp_path: Path, fake_pve: FakeProxmox, echo: str, method: str, path: str, command: str
) -> None:
    secret, token_id = fake_pve.token_secret, fake_pve.token_id
    lab = write_lab(tmp_path / "lab.yml", lab_data(fake_pve, [{"name": "web", "ip": "10.10.0.10"}]))
    fake_pve.call(
        "fail", method=method, suffix=path, status=400, message=ECHOES[echo].format(id=token_id, secret=secret)
    )
    args = [command] if command == "plan" else [command, "--yes"]
    result = run_cli(*args, lab=lab, env={"HOMELAB_PROXMOX_TOKEN": secret})
    assert result.exit_code == 1, result.output
    shown = result.stdout + result.stderr
    assert "***" in shown  # the server's message is shown, masked
    assert secret not in shown
    assert secret not in "".join(p.read_text() for p in (tmp_path / "state").rglob("*.log"))
