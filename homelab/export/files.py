"""The files of a Terraform export: versions, provider, variables, VMs, imports, outputs and a README."""

from __future__ import annotations

from dataclasses import dataclass

from homelab.export.facts import ExportFacts
from homelab.export.hcl import Blank, Block, Comment, Expr, render_file
from homelab.export.terraform import VM_RESOURCE, ExportedVm, vm_blocks
from homelab.lab.models import Lab

PROVIDER_SOURCE = "bpg/proxmox"
# The provider release the export is written and schema-checked against (tests/data/bpg_proxmox_schema.json);
# pre-1.0 minor releases may rename attributes, so the range stays within it.
PROVIDER_VERSION = "0.111.1"
PROVIDER_CONSTRAINT = "~> 0.111.1"
TERRAFORM_CONSTRAINT = ">= 1.5.0"  # import blocks
HEADER = "Written by `homelab export terraform` from lab {lab}; run it again after changing the lab file."
FILES = ("versions.tf", "provider.tf", "variables.tf", "vms.tf", "imports.tf", "outputs.tf", "README.md")


@dataclass(frozen=True)
class TerraformExport:
    """The files to write (name -> text), the VMs exported, and what the provider could not express."""

    lab: str
    files: dict[str, str]
    vms: tuple[ExportedVm, ...]
    notes: tuple[str, ...]

    @property
    def imported(self) -> tuple[ExportedVm, ...]:
        """The VMs an import block adopts."""
        return tuple(vm for vm in self.vms if vm.vmid is not None)


def build_export(lab: Lab, facts: ExportFacts) -> TerraformExport:
    """The whole export of a lab (pure)."""
    header = HEADER.format(lab=lab.name)
    notes: list[str] = []
    if lab.proxmox.ca_bundle:
        notes.append(
            f"proxmox.ca_bundle: the provider has no CA setting; export SSL_CERT_FILE={lab.proxmox.ca_bundle} "
            "before running terraform (Go's TLS reads it on Linux)"
        )
    exported, resources, imports = [], [], []
    for vm in lab.vms:
        made = vm_blocks(lab, vm, facts)
        if isinstance(made, str):
            notes.append(made)
            continue
        exported.append(made.vm)
        resources.append(made.resource)
        notes += made.notes
        if made.import_block is not None:
            imports.append(made.import_block)
    marked = {vm.name for vm in lab.vms}
    notes += [
        f"VM {live.vmid} ({live.name}) is marked as lab {lab.name}'s but not in the lab file: not exported"
        for live in facts.managed
        if ((live.meta or {}).get("vm") or live.name) not in marked and not live.is_keeper
    ]
    import_header = header + "\nImport blocks (Terraform 1.5+): the first `terraform apply` adopts these running VMs."
    files = {
        "versions.tf": render_file([_versions()], header),
        "provider.tf": render_file([_provider(lab)], header),
        "variables.tf": render_file(_variables(lab), header),
        "vms.tf": render_file(resources or [Comment("The lab file has no VMs.")], header),
        "imports.tf": render_file(imports or [Comment("No VM of the lab runs yet: nothing to import.")], import_header),
        "outputs.tf": render_file([_output(vm) for vm in exported] or [Comment("No VMs.")], header),
    }
    files["README.md"] = readme(lab, tuple(exported), tuple(notes))
    return TerraformExport(lab.name, files, tuple(exported), tuple(notes))


def _versions() -> Block:
    providers = Block("required_providers").set("proxmox", {"source": PROVIDER_SOURCE, "version": PROVIDER_CONSTRAINT})
    return Block("terraform").set("required_version", TERRAFORM_CONSTRAINT).add(Blank(), providers)


def _provider(lab: Lab) -> Block:
    provider = Block("provider", ("proxmox",)).set("endpoint", Expr("var.proxmox_endpoint"))
    provider.set("insecure", Expr("var.proxmox_insecure"))
    if lab.proxmox.token_id:
        provider.add(
            Comment(
                "The secret is never written to a file: the provider reads PROXMOX_VE_API_TOKEN\n"
                '("<token id>=<secret>") from the environment, or set TF_VAR_proxmox_token_secret to pair\n'
                "the secret alone with var.proxmox_token_id."
            )
        )
        provider.set(
            "api_token",
            Expr('var.proxmox_token_secret == null ? null : "${var.proxmox_token_id}=${var.proxmox_token_secret}"'),
        )
    else:
        provider.add(Comment("The password is never written to a file: the provider reads PROXMOX_VE_PASSWORD."))
        provider.set("username", Expr("var.proxmox_username"))
    return provider


def _variable(name: str, description: str, type_: str, default: str | bool | None, sensitive: bool = False) -> Block:
    block = Block("variable", (name,)).set("description", description).set("type", Expr(type_))
    block.set("default", Expr("null") if default is None else default)
    return block.set("sensitive", True if sensitive else None)


def _variables(lab: Lab) -> list[Block | Comment]:
    found: list[Block | Comment] = [
        _variable("proxmox_endpoint", "The Proxmox API address (the lab's proxmox.url).", "string", lab.proxmox.url),
        _variable(
            "proxmox_insecure",
            "Skip TLS verification (the lab's proxmox.verify_tls turned round).",
            "bool",
            not lab.proxmox.verify_tls,
        ),
    ]
    if lab.proxmox.token_id:
        found.append(
            _variable(
                "proxmox_token_id", "The API token id (the lab's proxmox.token_id).", "string", lab.proxmox.token_id
            )
        )
        found.append(
            _variable(
                "proxmox_token_secret",
                "The token's secret: leave unset and export PROXMOX_VE_API_TOKEN, or TF_VAR_proxmox_token_secret.",
                "string",
                None,
                sensitive=True,
            )
        )
    elif lab.proxmox.user:
        found.append(_variable("proxmox_username", "user@realm (the lab's proxmox.user).", "string", lab.proxmox.user))
    return found


def _output(vm: ExportedVm) -> Block:
    """A VM's address: the lab's static IP, or the first IPv4 address the guest agent reports."""
    output = Block("output", (f"{vm.name.replace('-', '_')}_address",)).set("description", f"The address of {vm.name}.")
    if vm.address != "dhcp":
        return output.set("value", vm.address)
    found = f'[for ip in flatten({vm.resource}.ipv4_addresses) : ip if !startswith(ip, "127.")]'
    return output.set("value", Expr(f"try({found}[0], null)"))


def readme(lab: Lab, vms: tuple[ExportedVm, ...], notes: tuple[str, ...]) -> str:
    """DIR/README.md: how to run it, and what homelab keeps doing once Terraform owns the VMs."""
    if lab.proxmox.token_id:
        auth = (
            f'export PROXMOX_VE_API_TOKEN="{lab.proxmox.token_id}=$HOMELAB_PROXMOX_TOKEN"   # the secret, never a file'
        )
    else:
        auth = 'export PROXMOX_VE_PASSWORD="$HOMELAB_PROXMOX_PASSWORD"   # never a file'
    ca = f"export SSL_CERT_FILE={lab.proxmox.ca_bundle}\n" if lab.proxmox.ca_bundle else ""
    rows = "\n".join(
        f"| {vm.name} | `{vm.resource}` | {f'{vm.node}/{vm.vmid} (imported)' if vm.vmid else 'created by Terraform'} "
        f"| {vm.clone_name} ({vm.clone_vmid}) |"
        for vm in vms
    )
    said = "\n".join(f"- {note}" for note in notes) or "- nothing: every setting of the lab's VMs is in the HCL."
    return f"""# Lab {lab.name} as Terraform

Written by `homelab export terraform` for the bpg/proxmox provider {PROVIDER_VERSION} ({PROVIDER_CONSTRAINT}),
Terraform {TERRAFORM_CONSTRAINT}. Run the export again after changing the lab file; it rewrites only these files:
{", ".join(f"`{name}`" for name in FILES)}.

## Run it

```sh
{auth}
{ca}terraform init
terraform plan    # the running VMs are imported; a lab `homelab plan` calls unchanged shows no change
terraform apply
```

| lab VM | resource | adopts | cloned from |
| --- | --- | --- | --- |
{rows}

Once imported, the VMs are in Terraform's state and the import blocks in `imports.tf` do nothing more.

## Who does what now

Put `engine: terraform` in the lab file. Then `homelab apply` and `homelab up` no longer change the VMs: they
show what differs from the lab file and record the addresses of the running VMs for the later stages. homelab
keeps doing the rest: template versions (`homelab template build`, `prune`), the deploy key
(`homelab keys ...`) and Docker with the service stacks (`homelab deploy`).

The `clone` block only matters when Terraform creates a VM: it is ignored once the VM exists
(`lifecycle.ignore_changes`), so a new template version does not replace a running VM. To move a VM onto the
newest version, export again and run `terraform apply -replace={VM_RESOURCE}.<vm>`.

## What the provider cannot express

{said}
"""
