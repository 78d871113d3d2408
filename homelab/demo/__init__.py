"""The built-in fake Proxmox: fakepve (a test and demo dependency) run as a separate process."""
