"""The command line: thin commands over the library. Heavy modules load only when a command runs."""

from __future__ import annotations

import importlib
import os
import sys
import types
from typing import Any

import click

from homelab import __version__
from homelab.cli.app import current_app

# The command line loads no third-party pydantic plugins: looking for them scans the entry points of every
# installed package (a tenth of a second in a big environment) before the first lab model is built, and
# `homelab validate` should cost little more than starting Python. PYDANTIC_DISABLE_PLUGINS is pydantic's own
# switch; a value set by the user wins.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")


def _skip_plugin_search() -> None:
    """With every plugin disabled, pydantic's plugin loader answers "none" without looking; but the module that
    holds it imports importlib.metadata (email, zipfile, csv: about a sixth of `import click`) when the first
    validator is built. Its one function, with the answer it would give, stands in for it."""
    name = "pydantic.plugin._loader"
    if os.environ.get("PYDANTIC_DISABLE_PLUGINS") not in ("__all__", "1", "true") or name in sys.modules:
        return
    loader = types.ModuleType(name, "pydantic's plugin loader while every plugin is disabled (homelab.cli)")
    loader.get_plugins = lambda: ()  # type: ignore[attr-defined]
    sys.modules[name] = loader


_skip_plugin_search()

# name -> (module, attribute, one-line help). Listing help does not import the modules.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "init": ("homelab.cli.init", "init", "Write lab.yml with a guided wizard that reads your Proxmox."),
    "doctor": ("homelab.cli.doctor", "doctor", "Check the token's privileges, storages, bridge and PVE version."),
    "validate": ("homelab.cli.labfile", "validate", "Check the lab file; one line per problem."),
    "schema": ("homelab.cli.labfile", "schema", "Print the lab file's JSON Schema (for editors)."),
    "demo": ("homelab.cli.demo", "demo", "Run homelab against the built-in fake Proxmox."),
    "up": ("homelab.cli.up", "up", "Bring the lab up: templates, VMs, deploy key, stacks (each plans first)."),
    "plan": ("homelab.cli.vms", "plan", "Show what apply would change (exit 3 when something would)."),
    "apply": ("homelab.cli.vms", "apply", "Make Proxmox match the lab file (plan first, then confirm)."),
    "destroy": ("homelab.cli.vms", "destroy", "Remove the VMs this lab manages."),
    "backup": ("homelab.cli.backup", "backup", "Back up the lab's VMs now with Proxmox's vzdump."),
    "snapshot": ("homelab.cli.snapshots", "snapshot", "Snapshot the lab's VMs (homelab prunes only its own)."),
    "rollback": ("homelab.cli.snapshots", "rollback", "Return a VM to a snapshot."),
    "status": ("homelab.cli.vms", "status", "Show each VM: state, address, template version, drift."),
    "deploy": ("homelab.cli.deploy", "deploy", "Deploy Docker and the service stacks onto the VMs (Ansible)."),
    "stack": ("homelab.cli.stacks", "stack", "Service stacks: list, show, add, remove, new (your own), render."),
    "template": ("homelab.cli.template", "template", "Build, list, prune and render VM templates."),
    "export": ("homelab.cli.export", "export", "Write the lab as Terraform (bpg/proxmox) that adopts the running VMs."),
    "secrets": ("homelab.cli.secrets", "secrets", "Stack secrets: list, show STACK once, the lab's local CA."),
    "keys": ("homelab.cli.keys", "keys", "Deploy keys for the config repo: generate, show, verify, install, rotate."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use, so `homelab --help` stays instant."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module = importlib.import_module(spec[0])
        command: click.Command = getattr(module, spec[1])
        _accept_lab_option(command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        from homelab.errors import LabFileError, LabNotFound

        try:
            return super().invoke(ctx)
        except LabNotFound as exc:
            raise exc.for_command(current_app().command) from None
        except LabFileError as exc:
            # NodeProblems' module loads only with the commands that talk to Proxmox (`validate` never does):
            # when one was raised, its module is loaded.
            nodes = sys.modules.get("homelab.provision.nodes")
            if nodes is not None and isinstance(exc, nodes.NodeProblems):
                raise exc.pinned(current_app().lab_path) from None
            raise

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        return run_guarded(lambda: super(LazyGroup, self).main(*args, **kwargs))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


LAB_HELP = "The lab file (default: $HOMELAB_LAB, else ./lab.yml)."


def _remember_lab(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """`--lab` given after a subcommand overrides the one before it; both land in the App."""
    app = current_app()
    app.command = " ".join(["homelab", *ctx.command_path.split()[1:]])
    if value:
        app.lab_option = value


def _accept_lab_option(command: click.Command) -> None:
    """Let `--lab PATH` follow any subcommand (`homelab plan --lab x.yml`), not only precede it."""
    if any(param.name == "lab_after" for param in command.params):
        return
    command.params.append(
        click.Option(["--lab", "lab_after"], metavar="PATH", expose_value=False, callback=_remember_lab, help=LAB_HELP)
    )
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            _accept_lab_option(sub)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="homelab")
@click.option("--lab", "lab_path", metavar="PATH", envvar="HOMELAB_LAB", help=LAB_HELP)
@click.pass_context
def cli(ctx: click.Context, lab_path: str | None) -> None:
    """homelab: one YAML file in, a working Proxmox homelab out."""
    current_app().lab_option = lab_path


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the `homelab` command."""
    return cli.main(args=argv, prog_name="homelab")


def run_guarded(invoke: Any) -> Any:
    """Run a command, mapping homelab's errors to messages and exit codes; never show a traceback."""
    from homelab.errors import HomelabError
    from homelab.masking import mask

    try:
        return invoke()
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except HomelabError as exc:
        for line in exc.lines():
            click.echo(mask(line), err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as exc:  # the CLI edge: anything unexpected goes to the debug log
        path = _write_debug_log()
        click.echo(mask(f"homelab: unexpected error: {type(exc).__name__}: {exc}"), err=True)
        click.echo(f"The full traceback is in {path}; please include it in a bug report.", err=True)
        sys.exit(1)


def _write_debug_log() -> str:
    import traceback
    from datetime import UTC, datetime

    from homelab.masking import mask
    from homelab.paths import debug_log

    path = debug_log()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:
            out.write(f"--- {datetime.now(UTC).isoformat()} homelab {' '.join(sys.argv[1:])}\n")
            out.write(mask(traceback.format_exc()))
        return str(path)
    except OSError:
        return "(debug log could not be written)"
