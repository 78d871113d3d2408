# Plugins for current Packer (1.7 and later): run `packer init .` once in this folder.
# Debian's Packer 1.6 has these built in and rejects this block: build with
# `packer build homelab.pkr.hcl` there, so this file is not read.
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    proxmox = {
      source  = "github.com/hashicorp/proxmox"
      version = ">= 1.1.8"
    }
    ansible = {
      source  = "github.com/hashicorp/ansible"
      version = ">= 1.1.0"
    }
  }
}
