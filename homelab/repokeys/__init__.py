"""The config repo's deploy key: generate it, verify it reads the repo, install it on the VMs, rotate it.

(Not the ``deploy`` stage: that one logs in with the admin key and runs Ansible.) The functions the CLI
and the pipeline call are in :mod:`homelab.repokeys.core`.
"""
