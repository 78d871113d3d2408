# Part of homelab (MIT). What the preview's one module run (homelab_files, "Check the VM") asks of the host besides
# the files: is Docker there, do the stacks' containers run, and what the data disk tasks would change. Ansible
# ships this file with the module (the role's module_utils).
from __future__ import annotations

import os
import re
import shutil
import stat


def docker_missing(module):
    """Docker's engine or compose is not there (dockerd is in /usr/sbin, which is not on every PATH)."""
    engine = any(os.access(p, os.X_OK) for p in ("/usr/sbin/dockerd", "/usr/bin/dockerd")) or shutil.which("dockerd")
    compose = shutil.which("docker-compose") or _succeeds(module, ["docker", "compose", "version"])
    return not (engine and compose)


def to_start(module, services):
    """Any of ``services`` (project/service) is not a running container (no Docker at all: all of them)."""
    label = '{{.Label "com.docker.compose.%s"}}'
    argv = ["docker", "ps", "--filter", "status=running", "--format", f"{label % 'project'}/{label % 'service'}"]
    try:
        rc, out, _ = module.run_command(argv, handle_exceptions=False)
    except OSError:
        return True
    return rc != 0 or bool(set(services) - set(out.splitlines()))


def _succeeds(module, argv):
    try:
        return module.run_command(argv, handle_exceptions=False)[0] == 0
    except OSError:
        return False


def fstab_line(label, folder):
    """The line the data disk tasks keep in /etc/fstab: the disk by label, nofail (a VM without it still boots)."""
    return f"LABEL={label} {folder} ext4 defaults,nofail 0 2"


def with_fstab_line(text, label, folder):
    """/etc/fstab's text after the data disk tasks' lineinfile: its last line for the label replaced, else added."""
    lines = text.splitlines()
    wanted = fstab_line(label, folder)
    pattern = re.compile(rf"^LABEL={re.escape(label)}\s")
    found = [i for i, line in enumerate(lines) if pattern.match(line)]
    if found and lines[found[-1]] == wanted:
        return text
    if found:
        lines[found[-1]] = wanted
    else:
        lines.append(wanted)
    return "\n".join(lines) + "\n"


def data_disk_changes(module, disk, uid, change, fstab="/etc/fstab"):
    """What the data disk tasks (the stacks role's tasks/datadisk.yml) would change, as diff entries made by ``change``:
    a blank disk formatted, the mount point made, the fstab line, the mount, the owner. No disk: nothing."""
    device, label, folder = disk["device"], disk["label"], os.path.normpath(disk["dir"])
    if not os.path.lexists(device):
        return []
    rc, out, err = module.run_command(["blkid", "-o", "value", "-s", "TYPE", device])
    if rc not in (0, 2):  # 2: no file system found
        module.fail_json(msg=f"cannot read the data disk {device}: blkid exited {rc}: {err.strip()}")
    changes = []
    if not out.strip():
        changes.append(change(device, {"path": device, "state": "blank"}, {"path": device, "state": "ext4"}, "format"))
    if not os.path.isdir(folder):
        changes.append(change(folder, {"path": folder, "state": "absent"}, {"path": folder, "state": "directory"},
                              "new folder"))  # fmt: skip
    try:
        with open(fstab, encoding="utf-8") as handle:
            before = handle.read()
    except FileNotFoundError:
        before = ""
    after = with_fstab_line(before, label, folder)
    if after != before:
        changes.append(change(fstab, before, after, "content"))
    if not os.path.ismount(folder):
        changes.append(change(folder, {"path": folder, "state": "unmounted"}, {"path": folder, "state": "mounted"},
                              "mount"))  # fmt: skip
    else:
        st = os.stat(folder)
        if st.st_uid != uid or stat.S_IMODE(st.st_mode) != 0o755:
            before = {"path": folder, "mode": oct(stat.S_IMODE(st.st_mode)), "owner": st.st_uid}
            changes.append(change(folder, before, {"path": folder, "mode": "0o755", "owner": uid}, "attributes"))
    return changes
