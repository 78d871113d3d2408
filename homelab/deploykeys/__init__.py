"""Deploy keys for the lab's private config repo: generate, verify, install on the VMs, rotate.

The functions the CLI and the deploy stage call are in :mod:`homelab.deploykeys.core`.
"""
