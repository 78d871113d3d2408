#!/usr/bin/python
# Part of homelab (MIT). An Ansible module: put a set of rendered files under one folder in one
# module run (instead of one copy per file), owned by one user, with check and diff mode.
from __future__ import annotations

DOCUMENTATION = r"""
module: homelab_files
short_description: Write rendered stack files under a folder, owned by one user
description:
  - Creates O(root) and each of O(dirs) below it (mode 0755), then writes each of O(files) atomically
    when its content, mode or owner differ. Files not listed are left alone.
  - Deletes each stack folder in O(remove) whose C(.homelab-stack) marker names O(lab) and that stack;
    a folder without such a marker (one made by hand) is never touched.
  - Returns C(stack_markers), the text of the C(.homelab-stack) marker of every folder directly under
    O(root) that has one (also in check mode), so that homelab can tell which stacks it made there.
  - Supports check mode and diff mode (one diff per changed file or removed folder).
options:
  root: {type: path, required: true, description: The folder everything goes under.}
  owner: {type: str, required: true, description: User owning the folders and files (group is its primary group).}
  dirs: {type: list, elements: str, default: [], description: Folders to create, relative to O(root), parents first.}
  files:
    type: list
    elements: dict
    default: []
    description:
      - Files, each with C(path) (relative to O(root)), C(content_b64) and C(mode) (octal string).
      - C(host_ids) true replaces @PUID@ and @PGID@ in the content with O(owner)'s uid and gid, and @RENDER_GID@
        with the id of the host's render group (which owns /dev/dri/renderD*; a host without one fails).
  private_dirs:
    type: list
    elements: str
    default: []
    description: Folders (relative to O(root)) only the owner may enter (0700).
  data_dirs:
    type: list
    elements: str
    default: []
    description: Absolute folders outside O(root) owned by O(owner), group-writable and setgid (2775), parents first.
  state_dirs:
    type: list
    elements: str
    default: []
    description:
      - Absolute folders (a stack's STATE_DIR and its subfolders), parents first, made owned by O(owner) (0755)
        when missing. One that exists is never changed (a container may have made it its own).
  seeds:
    type: list
    elements: dict
    default: []
    description:
      - Files with an absolute C(path) (in a stack's STATE_DIR), C(content_b64) and C(mode), written only when
        nothing is at C(path) yet (an app's settings before its first start; never rewritten, so the app's
        and the user's changes stay). Missing parent folders are made owned by O(owner) (0755).
  moves:
    type: list
    elements: dict
    default: []
    description:
      - State folders of an earlier layout, each C(stack), C(src) (relative to O(root)) and C(dest) (absolute).
        A C(src) that is a real folder moves to C(dest) when C(dest) does not exist yet (a rename, or a copy
        that keeps owners and modes, then the old folder goes). Nothing is ever deleted that was not copied.
  moves_plan_only:
    type: bool
    default: false
    description: Only report the stacks with a move pending (C(pending_moves)).
  purge_state:
    type: dict
    default: {}
    description:
      - Stack name to its state folder (--purge-data); the path must end in /stacks/<name>. For a stack in
        O(remove), deleted only together with its folder; for any other (one removed by an earlier deploy,
        its data kept), only when no folder of that name is under O(root).
  remove: {type: list, elements: str, default: [], description: Stack folders (names under O(root)) to delete.}
  lab: {type: str, default: "", description: The lab whose marker a folder in O(remove) must carry.}
  secrets:
    type: str
    default: ""
    no_log: true
    description:
      - The stack secrets as JSON (C(dirs), C(files), C(seeds): as O(private_dirs), O(files), O(seeds)), handled
        after the rest and reported only as C(secrets_changed), never in the diff (the preview's one module run).
  docker: {type: bool, default: false, description: Look for Docker's engine and compose (C(docker_missing)).}
  data_disk:
    type: dict
    description:
      - The VM's data disk, C(device), C(label) and C(dir) (check mode only): what tasks/datadisk.yml would change
        (format a blank disk, the mount point, the fstab line, the mount, the owner) joins the diff.
  running:
    type: list
    elements: str
    description: project/service of each container the stacks run; C(to_start) says whether any is not running.
"""

import base64
import errno
import grp
import json
import os
import pwd
import shutil
import stat
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.homelab_host import data_disk_changes, docker_missing, to_start

MARKER = ".homelab-stack"
MARKER_LIMIT = 4096


def _inside(root, rel):
    path = os.path.normpath(os.path.join(root, rel))
    if path != root and not path.startswith(root.rstrip("/") + "/"):
        raise ValueError(f"{rel!r} is outside {root}")
    return path


def _change(path, before, after, kind, after_header=None):
    """One entry of the diff Ansible shows (homelab reads ``homelab_change``: what kind of change it is)."""
    return {
        "before_header": path,
        "after_header": after_header or path,
        "before": before,
        "after": after,
        "homelab_change": kind,
    }


def _folder(path, state):
    return {"path": path, "state": state}


def _ensure_dir(module, path, uid, gid, changes, mode=0o755):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        changes.append(_change(path, _folder(path, "absent"), _folder(path, "directory"), "new folder"))
        if not module.check_mode:
            os.mkdir(path, 0o700)
            os.chown(path, uid, gid)
            os.chmod(path, mode)
        return True
    if not stat.S_ISDIR(st.st_mode):
        module.fail_json(msg=f"{path} exists and is not a folder")
    if stat.S_IMODE(st.st_mode) != mode or st.st_uid != uid or st.st_gid != gid:
        before = {"path": path, "mode": oct(stat.S_IMODE(st.st_mode)), "owner": st.st_uid}
        changes.append(_change(path, before, {"path": path, "mode": oct(mode), "owner": uid}, "attributes"))
        if not module.check_mode:
            os.chown(path, uid, gid)
            os.chmod(path, mode)  # after chown, which clears the setgid bit
        return True
    return False


def _write_file(module, path, data, mode, uid, gid, changes):
    before = None
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            module.fail_json(msg=f"{path} exists and is not a regular file")
        with open(path, "rb") as handle:
            before = handle.read()
    except FileNotFoundError:
        st = None
    same_content = before == data
    if st is not None and same_content and stat.S_IMODE(st.st_mode) == mode and st.st_uid == uid:
        return False
    # new file, new content, or only its mode or owner differ (then before == after)
    kind = "new" if st is None else "content" if not same_content else "attributes"
    changes.append(_change(path, (before or b"").decode("utf-8", "replace"), data.decode("utf-8", "replace"), kind))
    if module.check_mode:
        return True
    if same_content:
        os.chmod(path, mode)
        os.chown(path, uid, gid)
        return True
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".homelab-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.chown(tmp, uid, gid)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True


def _marker(folder):
    """The text of a folder's marker file; None when the folder or the marker is not a plain one."""
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return None
        if not stat.S_ISREG(os.lstat(os.path.join(folder, MARKER)).st_mode):
            return None
        with open(os.path.join(folder, MARKER), "rb") as handle:
            return handle.read(MARKER_LIMIT).decode("utf-8", "replace")
    except (FileNotFoundError, NotADirectoryError):
        return None


def _markers(root):
    """Every folder directly under root that holds a marker, with the marker's text."""
    try:
        names = sorted(os.listdir(root))
    except (FileNotFoundError, NotADirectoryError):
        return {}
    found = {}
    for name in names:
        text = _marker(os.path.join(root, name))
        if text is not None:
            found[name] = text
    return found


def _owner(text):
    """(lab, stack) a marker names (homelab.deploy.removed.read_marker, which this mirrors)."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.startswith("#"):
            values[key.strip()] = value.strip()
    return values.get("lab"), values.get("stack")


def _remove_stack(module, root, name, lab, changes):
    """Delete a stack folder, only when its marker says this lab made it for that stack."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a folder name")
    path = os.path.join(root, name)
    text = _marker(path)
    if text is None or _owner(text) != (lab, name):
        return False  # not homelab's (any longer): leave it
    changes.append(_change(path, _folder(path, "directory"), _folder(path, "absent"), "removed stack"))
    if not module.check_mode:
        shutil.rmtree(path)  # never follows a symlink inside (and path itself is a real folder)
    return True


def _purge_state(module, name, path, changes):
    """Delete a removed stack's state folder (--purge-data): only a real folder named .../stacks/<name>."""
    path = os.path.normpath(str(path))
    if not os.path.isabs(path) or not path.endswith(f"/stacks/{name}"):
        raise ValueError(f"{path!r} is not the state folder of stack {name}")
    if not os.path.isdir(path) or os.path.islink(path):
        return False
    changes.append(_change(path, _folder(path, "directory"), _folder(path, "absent"), "data deleted (--purge-data)"))
    if not module.check_mode:
        shutil.rmtree(path)
    return True


def _purge_kept(module, root, name, path, changes):
    """Delete the data an earlier removal kept (--purge-data): only while the stack has no folder under root."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"{name!r} is not a folder name")
    if os.path.lexists(os.path.join(root, name)):
        return False  # deployed, or a folder homelab did not remove: its data is not left over
    return _purge_state(module, name, path, changes)


def _pending(root, moves):
    """The moves whose old folder is there (a real folder) and whose new one is not."""
    found = []
    for move in moves:
        src = _inside(root, move["src"])
        dest = os.path.normpath(move["dest"])
        if not os.path.isabs(dest):
            raise ValueError(f"{dest!r} is not an absolute path")
        if os.path.isdir(src) and not os.path.islink(src) and not os.path.lexists(dest):
            found.append((move["stack"], src, dest))
    return found


def _make_missing(module, path, uid, gid, changes):
    """Create ``path`` and its missing parents owned by the user (0755); an existing folder is left as it is."""
    if os.path.lexists(path):
        if not os.path.isdir(path):
            module.fail_json(msg=f"{path} exists and is not a folder")
        return False
    parent = os.path.dirname(path)
    if parent != path:
        _make_missing(module, parent, uid, gid, changes)
    return _ensure_dir(module, path, uid, gid, changes)


def _move(module, stack, src, dest, uid, gid, changes):
    before, after = _folder(src, "directory"), _folder(dest, "directory")
    changes.append(_change(src, before, after, f"state of {stack} moves to {dest}", after_header=dest))
    if module.check_mode:
        return
    _make_missing(module, os.path.dirname(dest), uid, gid, [])
    try:
        os.rename(src, dest)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    # another file system (the data disk): copy everything with owners, modes, links and times, then swap in
    partial = dest + ".homelab-moving"
    if os.path.lexists(partial):
        shutil.rmtree(partial)
    rc, _, err = module.run_command(["cp", "-a", "--", src, partial])
    if rc != 0:
        module.fail_json(msg=f"copying {src} to {partial} failed (the old folder is untouched): {err.strip()}")
    os.rename(partial, dest)
    shutil.rmtree(src)


def main():
    module = AnsibleModule(
        argument_spec={
            "root": {"type": "path", "required": True},
            "owner": {"type": "str", "required": True},
            "dirs": {"type": "list", "elements": "str", "default": []},
            "files": {"type": "list", "elements": "dict", "default": []},
            "private_dirs": {"type": "list", "elements": "str", "default": []},
            "data_dirs": {"type": "list", "elements": "path", "default": []},
            "remove": {"type": "list", "elements": "str", "default": []},
            "lab": {"type": "str", "default": ""},
            "state_dirs": {"type": "list", "elements": "path", "default": []},
            "moves": {"type": "list", "elements": "dict", "default": []},
            "seeds": {"type": "list", "elements": "dict", "default": []},
            "moves_plan_only": {"type": "bool", "default": False},
            "purge_state": {"type": "dict", "default": {}},
            "secrets": {"type": "str", "default": "", "no_log": True},
            "docker": {"type": "bool", "default": False},
            "running": {"type": "list", "elements": "str"},
            "data_disk": {"type": "dict"},
        },
        supports_check_mode=True,
    )
    root = os.path.normpath(module.params["root"])
    try:
        user = pwd.getpwnam(module.params["owner"])
    except KeyError:
        module.fail_json(msg=f"no user {module.params['owner']!r} on this host")
    uid, gid = user.pw_uid, user.pw_gid
    if os.geteuid() not in (0, uid):
        module.fail_json(msg=f"logged in as uid {os.geteuid()}: cannot give files to {user.pw_name} without root")
    changes = []
    changed_paths = []
    if module.params["moves_plan_only"]:
        try:
            pending = _pending(root, module.params["moves"])
        except ValueError as exc:
            module.fail_json(msg=str(exc))
        module.exit_json(changed=False, pending_moves=sorted({stack for stack, _, _ in pending}))
    found = {}
    disk = module.params["data_disk"]
    if disk and not module.check_mode:
        module.fail_json(msg="data_disk is only looked at in check mode (tasks/datadisk.yml makes the changes)")
    try:
        if disk:  # first, as the real run formats and mounts the disk before the files
            disk_changes = data_disk_changes(module, disk, uid, _change)
            changes.extend(disk_changes)
            changed_paths.extend(entry["after_header"] for entry in disk_changes)
        _apply(module, root, module.params, uid, gid, changes, changed_paths)
        if module.params["secrets"]:
            secrets = json.loads(module.params["secrets"])
            params = {**EMPTY, "private_dirs": secrets.get("dirs", []), "files": secrets.get("files", [])}
            secret_paths = []
            _apply(module, root, {**params, "seeds": secrets.get("seeds", [])}, uid, gid, [], secret_paths)
            found["secrets_changed"] = bool(secret_paths)
    except (OSError, ValueError) as exc:
        module.fail_json(msg=str(exc), changed=bool(changed_paths), paths=changed_paths)
    if module.params["docker"]:
        found["docker_missing"] = docker_missing(module)
    if module.params["running"] is not None:
        found["to_start"] = to_start(module, module.params["running"])
    module.exit_json(
        changed=bool(changed_paths), paths=changed_paths, diff=changes, stack_markers=_markers(root), **found
    )


EMPTY = {
    "moves": [],
    "state_dirs": [],
    "dirs": [],
    "files": [],
    "private_dirs": [],
    "data_dirs": [],
    "seeds": [],
    "remove": [],
    "purge_state": {},
    "lab": "",
}


def _apply(module, root, params, uid, gid, changes, changed_paths):
    """Every change ``params`` asks for (or, in check mode, would make), in the playbook's order."""
    dirs, files, private = params["dirs"], params["files"], params["private_dirs"]
    for stack, src, dest in _pending(root, params["moves"]):
        _move(module, stack, src, dest, uid, gid, changes)
        changed_paths.append(dest)
    for path in params["state_dirs"]:
        if not os.path.isabs(path):
            raise ValueError(f"{path!r} is not an absolute path")
        if _make_missing(module, os.path.normpath(path), uid, gid, changes):
            changed_paths.append(path)
    for rel in ["", *dirs] if dirs or files or private else []:  # nothing to write: root is not made either
        path = _inside(root, rel) if rel else root
        if _ensure_dir(module, path, uid, gid, changes):
            changed_paths.append(path)
    for rel in private:
        path = _inside(root, rel)
        if _ensure_dir(module, path, uid, gid, changes, mode=0o700):
            changed_paths.append(path)
    for entry in files:
        path = _inside(root, entry["path"])
        data = base64.b64decode(entry["content_b64"])
        if entry.get("host_ids"):
            data = data.replace(b"@PUID@", str(uid).encode()).replace(b"@PGID@", str(gid).encode())
            if b"@RENDER_GID@" in data:
                data = data.replace(b"@RENDER_GID@", str(_render_gid()).encode())
        if _write_file(module, path, data, int(str(entry.get("mode", "0644")), 8), uid, gid, changes):
            changed_paths.append(path)
    for entry in params["seeds"]:
        if _seed(module, entry, uid, gid, changes):
            changed_paths.append(entry["path"])
    for path in params["data_dirs"]:
        if not os.path.isabs(path):
            raise ValueError(f"{path!r} is not an absolute path")
        if _ensure_dir(module, os.path.normpath(path), uid, gid, changes, mode=0o2775):
            changed_paths.append(path)
    purge, remove = params["purge_state"], params["remove"]
    for name in remove:
        if _remove_stack(module, root, name, params["lab"], changes):
            changed_paths.append(os.path.join(root, name))
            if name in purge and _purge_state(module, name, purge[name], changes):
                changed_paths.append(purge[name])
    for name in sorted(set(purge) - set(remove)):
        if _purge_kept(module, root, name, purge[name], changes):
            changed_paths.append(purge[name])


def _seed(module, entry, uid, gid, changes):
    """Write a seed file where nothing is yet; an existing one (the app's or the user's) is left alone."""
    path = os.path.normpath(str(entry["path"]))
    if not os.path.isabs(path):
        raise ValueError(f"{path!r} is not an absolute path")
    if os.path.lexists(path):
        return False
    _make_missing(module, os.path.dirname(path), uid, gid, changes)
    mode = int(str(entry.get("mode", "0600")), 8)
    return _write_file(module, path, base64.b64decode(entry["content_b64"]), mode, uid, gid, changes)


def _render_gid() -> int:
    try:
        return grp.getgrnam("render").gr_gid
    except KeyError:
        raise ValueError("no group 'render' on this host: the VM has no GPU driver loaded (vms[].gpu)") from None


if __name__ == "__main__":
    main()
