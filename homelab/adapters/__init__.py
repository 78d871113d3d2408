"""The adapters floor: one module or package per outside system (Proxmox, processes, SSH, git, Ansible, Packer,
forges). An adapter knows no stage: it imports only homelab.lab, errors, paths and state, never provision,
templates, deploy, repokeys, the pipeline or the CLI."""
