"""`homelab doctor`: can this token on this Proxmox do what the lab needs? One round of reads (facts), pure
checks (checks), each problem one line with the `pveum` or `pvesm` command that fixes it. `up`, `apply`,
`template build` and `init` run it first and stop before changing anything when something blocks."""
