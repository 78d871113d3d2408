"""What homelab keeps on this machine: the secrets file, the hosts cache (hosts.json), the admin login key.

Stages read and write local state only through this package; it knows no stage and no outside system.
"""
