"""The authelia stack's generated files: the lab's domain in its configuration, a users database whose
bcrypt hash Authelia accepts for the generated password, the same file for the same password, nothing
secret in a preview, and paths that match what its compose file mounts."""

from __future__ import annotations

from typing import Any

import bcrypt
import pytest
import yaml

from homelab.deploy import stack_authelia
from homelab.errors import InputError, SecretError
from homelab.lab.loader import parse_lab
from homelab.stacks import catalogue
from tests.harness.labs import lab_data

PASSWORD = "8d1V4Xr0b-Yc2m_3kq9T5wZp7nH6sLfE"


def lab(domain: str | None = "lab.example.com", **stack: Any) -> Any:
    data = lab_data(vms=[{"name": "apps", "ip": "10.10.0.10", "stacks": ["traefik", "authelia"]}], domain=domain)
    if stack:
        data["stacks"] = {"authelia": stack}
    return parse_lab(yaml.safe_dump(data, sort_keys=False))


def files(the_lab: Any, values: dict[str, str] | None) -> dict[str, tuple[str, bool]]:
    vm = the_lab.vms[0]
    return {path: (content, secret) for path, content, secret in stack_authelia.files(the_lab, vm, values)}


def test_configuration_names_the_labs_domain_and_portal() -> None:
    content, secret = files(lab(), {"AUTHELIA_ADMIN_PASSWORD": PASSWORD})["configuration.yml"]
    config = yaml.safe_load(content)
    assert not secret and PASSWORD not in content
    assert config["session"]["cookies"] == [
        {"domain": "lab.example.com", "authelia_url": "https://auth.lab.example.com"}
    ]
    assert config["access_control"]["default_policy"] == "one_factor"
    assert config["totp"]["issuer"] == "lab.example.com"
    renamed = yaml.safe_load(
        files(lab(subdomain="login", env={"AUTHELIA_DEFAULT_POLICY": "two_factor"}), None)["configuration.yml"][0]
    )
    assert renamed["session"]["cookies"][0]["authelia_url"] == "https://login.lab.example.com"
    assert renamed["access_control"]["default_policy"] == "two_factor"
    no_domain = yaml.safe_load(files(lab(domain=None), None)["configuration.yml"][0])
    assert no_domain["session"]["cookies"][0]["domain"] == "home.arpa"


def test_users_database_holds_admin_with_a_bcrypt_hash_of_the_generated_password() -> None:
    content, secret = files(lab(), {"AUTHELIA_ADMIN_PASSWORD": PASSWORD})["secrets/users_database.yml"]
    admin = yaml.safe_load(content)["users"]["admin"]
    assert secret and PASSWORD not in content
    assert admin["password"].startswith("$2b$") and bcrypt.checkpw(PASSWORD.encode(), admin["password"].encode())
    assert not bcrypt.checkpw(b"another password", admin["password"].encode())
    assert admin["email"] == "admin@lab.example.com" and admin["disabled"] is False
    # the same password gives the same file (a deploy that changes nothing writes nothing), another one not
    assert files(lab(), {"AUTHELIA_ADMIN_PASSWORD": PASSWORD})["secrets/users_database.yml"][0] == content
    assert files(lab(), {"AUTHELIA_ADMIN_PASSWORD": PASSWORD + "x"})["secrets/users_database.yml"][0] != content


def test_a_preview_masks_the_users_database_and_a_missing_password_is_refused() -> None:
    content, secret = files(lab(), None)["secrets/users_database.yml"]
    assert secret and "$2" not in content and "homelab secrets show authelia" in content
    with pytest.raises(SecretError, match="AUTHELIA_ADMIN_PASSWORD"):
        files(lab(), {})


def test_an_unknown_policy_is_refused_naming_the_setting() -> None:
    with pytest.raises(InputError, match=r"stacks\.authelia\.env\.AUTHELIA_DEFAULT_POLICY: must be one of"):
        files(lab(env={"AUTHELIA_DEFAULT_POLICY": "bypass"}), None)


def test_the_files_are_where_the_compose_file_mounts_them() -> None:
    stack = catalogue()["authelia"].path
    service = yaml.safe_load((stack / "compose.yml").read_text())["services"]["authelia"]
    config = yaml.safe_load(files(lab(), None)["configuration.yml"][0])
    mounts = dict(volume.split(":", 1) for volume in service["volumes"])
    assert mounts["./configuration.yml"] == "/config/configuration.yml:ro"
    assert mounts["./secrets"] == "/secrets:ro"
    assert config["authentication_backend"]["file"]["path"] == "/secrets/users_database.yml"
    # every secret the container reads is one the stack declares (so the deploy generates it)
    declared = {secret.name for secret in catalogue()["authelia"].secrets}
    read = {value.removeprefix("/secrets/") for key, value in service["environment"].items() if key.endswith("_FILE")}
    assert read and read <= declared and "AUTHELIA_ADMIN_PASSWORD" in declared
    labels = service["labels"]
    assert labels["traefik.http.middlewares.authelia.forwardauth.address"] == (
        "http://authelia:9091/api/authz/forward-auth"
    )
    assert labels["traefik.http.middlewares.authelia.forwardauth.trustForwardHeader"] == "true"
    assert labels["traefik.http.middlewares.authelia.forwardauth.authResponseHeaders"].split(",") == [
        "Remote-User",
        "Remote-Groups",
        "Remote-Email",
        "Remote-Name",
    ]
