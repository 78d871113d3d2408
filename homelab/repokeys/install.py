"""The deploy key on the VMs: install it, and switch a VM from one key to another without a gap.

On each VM, for the lab's access user (``/home/<user>``)::

    .ssh/homelab_deploy_key       the key (0600, owned by the user); .pub beside it
    .ssh/config                   a managed block: ``Host <git host>`` using only that key
    .ssh/known_hosts              the pinned line of the git host (0644)
    config/                       the checkout of the config repo on the configured branch

A switch installs the new key beside the old one, fetches with it, points the ssh config at it, fetches
again, and only then replaces the old key file. Every step leaves the VM with a key file that the ssh
config points at and that the git host accepts, so the VM can always pull; a failed step puts the old
key back.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass

from homelab.adapters.git import RepoUrl
from homelab.adapters.ssh import Session, config_lines, run_script, ssh_args
from homelab.errors import OperationError
from homelab.repokeys.keys import DeployKey
from homelab.state.hosts import Host

KEY_NAME = "homelab_deploy_key"
BEGIN = "# BEGIN homelab deploy key (managed by homelab; changes here are overwritten)"
END = "# END homelab deploy key"


@dataclass(frozen=True)
class Checkout:
    """The config repo's checkout on a VM: the repo, the branch, the pinned host key line, the user."""

    repo: RepoUrl
    branch: str
    pinned_line: str
    user: str

    @property
    def home(self) -> str:
        """The user's home on the VM."""
        return f"/home/{self.user}"

    @property
    def key_path(self) -> str:
        """The deploy key on the VM."""
        return f"{self.home}/.ssh/{KEY_NAME}"

    @property
    def checkout(self) -> str:
        """The config repo's checkout on the VM."""
        return f"{self.home}/config"


@dataclass(frozen=True)
class HostOutcome:
    """What happened on one VM. ``uses`` is the fingerprint of the key its ssh config points at now."""

    host: str
    ok: bool
    uses: str | None
    detail: str = ""
    rolled_back: bool = False


def _q(value: str) -> str:
    return shlex.quote(value)


def _prelude(t: Checkout) -> str:
    """Shell variables and helpers every script starts with."""
    # The VM's git gets the same strict options as ours: its known_hosts holds only what pin() puts there.
    known_hosts = f"{t.home}/.ssh/known_hosts"
    ssh_opts = ssh_args(known_hosts, no_config=True)
    config = " ".join(_q(f"    {line}") for line in config_lines(known_hosts))
    return f"""\
umask 077
H={_q(t.home)}; S="$H/.ssh"; K="$S/{KEY_NAME}"; R={_q(t.checkout)}
export HOME="$H"
URL={_q(t.repo.url)}; BRANCH={_q(t.branch)}; TARGET={_q(t.repo.known_hosts_target)}
PIN={_q(t.pinned_line)}; BEGIN={_q(BEGIN)}; END={_q(END)}; SSHOPTS={_q(ssh_opts)}
fail() {{ echo "$*" >&2; exit 3; }}
put() {{ t="$2.homelab-tmp"; cat > "$t"; chmod "$1" "$t"; mv -f "$t" "$2"; }}
pin() {{
  touch "$S/known_hosts"
  awk -v t="$TARGET" '{{ n = split($1, a, ","); keep = 1
    for (i = 1; i <= n; i++) if (a[i] == t) keep = 0
    if (keep) print }}' "$S/known_hosts" > "$S/known_hosts.homelab-tmp"
  printf '%s\\n' "$PIN" >> "$S/known_hosts.homelab-tmp"
  chmod 644 "$S/known_hosts.homelab-tmp"; mv -f "$S/known_hosts.homelab-tmp" "$S/known_hosts"
}}
use_key() {{
  touch "$S/config"
  {{ printf '%s\\n' "$BEGIN" {_q("Host " + t.repo.host)} "    IdentityFile $1" {config} "Host *" "$END"
    awk -v b="$BEGIN" -v e="$END" '$0 == b {{ skip = 1 }} !skip {{ print }} $0 == e {{ skip = 0 }}' "$S/config"
  }} > "$S/config.homelab-tmp"
  chmod 600 "$S/config.homelab-tmp"; mv -f "$S/config.homelab-tmp" "$S/config"
}}
# fetch_with KEYFILE: fetch with only that key; fetch_with "": the way the VM pulls, through its ssh config.
fetch_with() {{
  if [ -n "$1" ]; then export GIT_SSH_COMMAND="ssh $SSHOPTS -i $1"; else unset GIT_SSH_COMMAND; fi
  if [ -d "$R/.git" ]; then
    git -C "$R" fetch -q origin "+refs/heads/$BRANCH:refs/remotes/origin/$BRANCH" || fail "git fetch failed"
  else
    git ls-remote -q "$URL" "refs/heads/$BRANCH" >/dev/null || fail "git ls-remote failed"
  fi
  unset GIT_SSH_COMMAND
}}
mkdir -p "$S"; chmod 700 "$S"
"""


def _put_key(path_var: str, key: DeployKey) -> str:
    private = key.private_bytes().decode("ascii").rstrip("\n")
    return (
        f"put 600 {path_var} <<'HOMELAB_KEY_EOF'\n{private}\nHOMELAB_KEY_EOF\n"
        f"printf '%s\\n' {_q(key.public_line)} | put 644 {path_var}.pub\n"
    )


_CHECKOUT = """\
if [ -d "$R/.git" ]; then
  git -C "$R" remote set-url origin "$URL"
  fetch_with ""
  if git -C "$R" show-ref -q --verify "refs/heads/$BRANCH"; then
    git -C "$R" checkout -q "$BRANCH" || fail "git checkout $BRANCH failed in $R"
  else
    git -C "$R" checkout -q -b "$BRANCH" "origin/$BRANCH" || fail "git checkout $BRANCH failed in $R"
  fi
  git -C "$R" merge -q --ff-only "origin/$BRANCH" || fail "$R has local commits on $BRANCH; it cannot fast-forward"
elif [ -e "$R" ]; then
  fail "$R exists but is not a git checkout; move it away"
else
  git clone -q --branch "$BRANCH" "$URL" "$R" || fail "git clone failed"
fi
"""


def _install_body(key: DeployKey) -> str:
    """Install ``key`` as the VM's deploy key and check out the repo (clone, or fetch + checkout)."""
    return _put_key('"$K"', key) + 'pin\nuse_key "$K"\nrm -f "$K.new" "$K.new.pub" "$K.old" "$K.old.pub"\n' + _CHECKOUT


NOT_INSTALLED = "not installed"
NOT_INSTALLED_EXIT = 10


class Switch:
    """The steps of switching one VM from its current key to ``new``; each returns None or an error detail."""

    def __init__(self, session: Session, target: Checkout, new: DeployKey):
        self.session = session
        self.target = target
        self.new = new

    def _run(self, body: str) -> str | None:
        result = self.session.run(_prelude(self.target) + body, as_user=self.target.user)
        if result.returncode == NOT_INSTALLED_EXIT:
            return NOT_INSTALLED
        return None if result.ok else result.detail()

    def stage(self) -> str | None:
        """Put the new key beside the old one (keeping a copy of the old) and fetch with only the new key.

        Returns NOT_INSTALLED when the VM has no deploy key or checkout yet (nothing to switch from).
        """
        return self._run(
            f'[ -f "$K" ] && [ -d "$R/.git" ] && grep -qsxF "$BEGIN" "$S/config" || exit {NOT_INSTALLED_EXIT}\n'
            + _put_key('"$K.new"', self.new)
            + 'cp -p "$K" "$K.old"\nif [ -f "$K.pub" ]; then cp -p "$K.pub" "$K.old.pub"; fi\n'
            + 'pin\nfetch_with "$K.new"\n'
        )

    def switch(self) -> str | None:
        """Point the ssh config at the new key and fetch the way the VM pulls."""
        return self._run('use_key "$K.new"\nfetch_with ""\n')

    def settle(self) -> str | None:
        """Replace the old key file with the new key, point the config back at it, drop the copies."""
        return self._run(
            # The copy of the old key goes only after the final fetch worked: a roll back needs it.
            'put 600 "$K" < "$K.new"\nput 644 "$K.pub" < "$K.new.pub"\nuse_key "$K"\nfetch_with ""\n'
            'rm -f "$K.new" "$K.new.pub" "$K.old" "$K.old.pub"\n'
        )

    def install(self) -> str | None:
        """A plain install of the new key (the VM had none)."""
        return self._run(_install_body(self.new))

    def roll_back(self) -> str | None:
        """Put the old key back in place and in the config; drop the new one."""
        return self._run(
            'if [ -f "$K.old" ]; then put 600 "$K" < "$K.old"; fi\n'
            'if [ -f "$K.old.pub" ]; then put 644 "$K.pub" < "$K.old.pub"; fi\n'
            'use_key "$K"\nrm -f "$K.new" "$K.new.pub" "$K.old" "$K.old.pub"\n'
        )

    def can_pull(self) -> str | None:
        """Fetch the way the VM pulls (through its ssh config)."""
        return self._run('fetch_with ""\n')


Progress = Callable[[str, str, str], None]
"""``progress(host, step, detail)``: called after each step on a VM."""


def switch_host(
    host: Host, lab_name: str, target: Checkout, new: DeployKey, old_fp: str, progress: Progress
) -> HostOutcome:
    """Switch one VM to ``new``; on any failure roll it back to the old key and say so."""
    try:
        with Session(host, lab_name) as session:
            return _switch(Switch(session, target, new), host.name, old_fp, progress)
    except OperationError as exc:  # could not connect: nothing was changed
        progress(host.name, "failed", str(exc))
        return HostOutcome(host.name, False, old_fp, f"{exc}; nothing was changed there")


def _switch(s: Switch, name: str, old_fp: str, progress: Progress) -> HostOutcome:
    new_fp = s.new.fingerprint
    try:
        error = s.stage()
        if error == NOT_INSTALLED:
            error = s.install()
            progress(name, "installed" if error is None else "failed", error or "")
            if error is None:
                return HostOutcome(name, True, new_fp, "installed (it had no deploy key)")
            return HostOutcome(name, False, None, f"install failed: {error}")
        if error is not None:
            detail = f"the new key cannot fetch here: {error}"
        else:
            progress(name, "staged", "new key installed beside the old one; fetch with it works")
            error = s.switch()
            if error is not None:
                detail = f"fetch through the ssh config failed with the new key: {error}"
            else:
                progress(name, "switched", "ssh config uses the new key; fetch works")
                error = s.settle()
                detail = f"finishing the switch failed: {error}"
                if error is None:
                    progress(name, "settled", "old key file removed")
                    return HostOutcome(name, True, new_fp, "switched to the new key")
    except OperationError as exc:
        detail = str(exc)
    try:
        back = s.roll_back()
        pull = s.can_pull() if back is None else None
    except OperationError as exc:
        back, pull = str(exc), None
    if back is not None:
        progress(name, "failed", f"{detail}; rolling back: {back}")
        return HostOutcome(name, False, None, f"{detail}; rolling back to the old key did not finish: {back}")
    detail += "; rolled back to the old key"
    if pull is not None:
        detail += f" (which cannot fetch right now either: {pull})"
    progress(name, "rolled-back", detail)
    return HostOutcome(name, False, old_fp, detail, rolled_back=True)


def install_key(host: Host, lab_name: str, target: Checkout, key: DeployKey) -> HostOutcome:
    """Install ``key`` on one VM and check out the repo; a failure is reported, not raised."""
    try:
        result = run_script(host, lab_name, _prelude(target) + _install_body(key), as_user=target.user)
    except OperationError as exc:
        return HostOutcome(host.name, False, None, str(exc))
    if result.ok:
        return HostOutcome(host.name, True, key.fingerprint, f"installed; {target.checkout} is on {target.branch}")
    return HostOutcome(host.name, False, None, result.detail())
