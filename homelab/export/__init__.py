"""Export: the lab in another tool's terms. ``homelab export terraform DIR`` writes bpg/proxmox HCL whose import
blocks adopt the running VMs. facts (read) -> build (pure: lab + facts -> files and notes) -> write."""
