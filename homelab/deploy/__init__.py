"""The deploy stage: Docker and the service stacks onto the lab's VMs, through Ansible.

render (pure: lab -> files per VM) -> inventory (pinned host keys, admin key) -> preview (Ansible check
and diff mode) -> confirm -> run -> per-host summary. ``deploy_stacks`` is stage 4 of `homelab up`.
"""
