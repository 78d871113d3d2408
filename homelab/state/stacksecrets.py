"""Stack secrets: the values of the settings a stack declares secret (stack.yml ``secrets:``).

Each comes from, in this order: the environment (``HOMELAB_<STACK>_<NAME>``), the lab's section of the
secrets file (``<lab>: {stacks: {<stack>: {<NAME>: ...}}}``, mode 0600), or the values homelab generated on
an earlier deploy (``<state>/<lab>/stack-secrets.yml``, 0600). A secret that can be generated and has no value
yet is generated (and, unless only previewing, kept). Never logged; a value's repr never shows it.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from homelab.errors import SecretError
from homelab.lab.models import Lab
from homelab.masking import register
from homelab.paths import state_dir
from homelab.stacks import SecretSpec
from homelab.state.files import write_secret
from homelab.state.secrets import read_private_yaml, secrets_file

PASSWORD_BYTES = 24  # 32 characters of urlsafe base64


def env_name(stack: str, name: str) -> str:
    """The environment variable that gives a stack's secret: HOMELAB_TRAEFIK_CF_DNS_API_TOKEN."""
    return f"HOMELAB_{stack.upper().replace('-', '_')}_{name}"


def generated_file(lab: Lab) -> Path:
    """Where homelab keeps the secrets it generated for the lab's stacks."""
    return state_dir(lab.name) / "stack-secrets.yml"


def where_it_belongs(lab: Lab, stack: str, name: str) -> str:
    """One line naming the places a stack secret is read from."""
    return (
        f"set {env_name(stack, name)}, or add '{lab.name}: {{stacks: {{{stack}: {{{name}: ...}}}}}}' "
        f"to {secrets_file()} (mode 0600)"
    )


@dataclass(frozen=True)
class Secret:
    """One stack secret's value and where it came from (environment, secrets file, generated)."""

    stack: str
    name: str
    value: str = field(repr=False)
    source: str


def _read_private_yaml(path: Path) -> dict[str, object]:
    data = read_private_yaml(path)
    if not isinstance(data, dict):
        raise SecretError(f"{path}: must be a mapping")
    return data


def _per_stack(section: object, where: str) -> dict[str, dict[str, str]]:
    if section is None:
        return {}
    if not isinstance(section, dict) or not all(isinstance(v, dict) for v in section.values()):
        raise SecretError(f"{where}: must map each stack to its secrets, e.g. {{traefik: {{CF_DNS_API_TOKEN: ...}}}}")
    return {str(stack): {str(k): str(v) for k, v in values.items()} for stack, values in section.items()}


def file_values(lab: Lab) -> dict[str, dict[str, str]]:
    """The stack secrets the user put in the secrets file, per stack."""
    path = secrets_file()
    section = _read_private_yaml(path).get(lab.name)
    stacks = section.get("stacks") if isinstance(section, dict) else None
    return _per_stack(stacks, f"{path}: {lab.name}.stacks")


def generated_values(lab: Lab) -> dict[str, dict[str, str]]:
    """The stack secrets homelab generated before, per stack."""
    path = generated_file(lab)
    return _per_stack(_read_private_yaml(path).get("stacks"), f"{path}: stacks")


def _generate(spec: SecretSpec) -> str:
    if spec.generate == "password":
        return secrets.token_urlsafe(PASSWORD_BYTES)
    if spec.generate == "hex32":
        return secrets.token_hex(32)
    if spec.generate == "hex16":  # 32 hex digits: the form of the *arr apps' and Bazarr's own API keys
        return secrets.token_hex(16)
    if spec.generate == "base64-32":
        return base64.b64encode(secrets.token_bytes(32)).decode("ascii")
    raise SecretError(f"cannot generate a secret of kind {spec.generate!r}")


def resolve(lab: Lab, wanted: Mapping[str, Iterable[SecretSpec]], *, keep: bool = True) -> dict[str, dict[str, Secret]]:
    """The value of every secret in ``wanted`` (per stack); generates what may be generated.

    ``keep``: write newly generated values to the lab's generated-secrets file (a preview passes False:
    it shows a new secret file without fixing its value). Raises SecretError naming every secret that
    has no value and cannot be generated, with where to put it.
    """
    from_file = file_values(lab)
    generated = generated_values(lab)
    found: dict[str, dict[str, Secret]] = {}
    missing: list[str] = []
    new = False
    for stack, specs in wanted.items():
        for spec in specs:
            value, source = os.environ.get(env_name(stack, spec.name)), "environment"
            if not value:
                value, source = from_file.get(stack, {}).get(spec.name), "secrets file"
            if not value:
                value, source = generated.get(stack, {}).get(spec.name), "generated"
            if not value and spec.generate:
                value = _generate(spec)
                generated.setdefault(stack, {})[spec.name] = value
                new = True
            if not value:
                missing.append(
                    f"stacks.{stack}: secret {spec.name} has no value: {where_it_belongs(lab, stack, spec.name)}"
                )
                continue
            register(value)  # no message of this run shows it (homelab.masking)
            found.setdefault(stack, {})[spec.name] = Secret(stack, spec.name, value, source)
    if missing:
        raise SecretError("; ".join(missing))
    if new and keep:
        keep_generated(lab, generated)
    return found


def keep_generated(lab: Lab, values: Mapping[str, Mapping[str, str]]) -> None:
    """Write the generated secrets file (0600 from birth)."""
    header = "# Secrets homelab generated for the lab's stacks on their first deploy. Keep this file private.\n"
    body = yaml.safe_dump({"stacks": {s: dict(v) for s, v in values.items()}}, sort_keys=True)
    write_secret(generated_file(lab), (header + body).encode("utf-8"))


def known(lab: Lab, stack: str, specs: Iterable[SecretSpec]) -> dict[str, Secret]:
    """The secrets of ``stack`` that have a value now (environment, secrets file, generated); generates none."""
    from_file = file_values(lab).get(stack, {})
    generated = generated_values(lab).get(stack, {})
    found = {}
    for spec in specs:
        for value, source in (
            (os.environ.get(env_name(stack, spec.name)), "environment"),
            (from_file.get(spec.name), "secrets file"),
            (generated.get(spec.name), "generated"),
        ):
            if value:
                found[spec.name] = Secret(stack, spec.name, value, source)
                break
    return found
