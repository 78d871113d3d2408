"""Small pure pieces of the executor."""

from __future__ import annotations

from homelab.provision.guestagent import first_address


def iface(name: str, *addrs: tuple[str, str]) -> dict[str, object]:
    return {"name": name, "ip-addresses": [{"ip-address": a, "ip-address-type": t, "prefix": 24} for a, t in addrs]}


def test_skips_loopback_link_local_and_ipv6() -> None:
    answer = [
        iface("lo", ("127.0.0.1", "ipv4")),
        iface("eth0", ("fe80::1", "ipv6"), ("169.254.3.4", "ipv4"), ("10.0.0.5", "ipv4")),
    ]
    assert first_address(answer) == "10.0.0.5"


def test_prefers_the_static_address_then_the_lab_subnet() -> None:
    answer = [iface("ens19", ("192.168.50.3", "ipv4")), iface("eth0", ("10.0.0.5", "ipv4"))]
    assert first_address(answer, prefer="10.0.0.5") == "10.0.0.5"
    assert first_address(answer, subnet="10.0.0.0/24") == "10.0.0.5"
    assert first_address(answer) == "192.168.50.3"


def test_container_bridges_are_not_the_vm_address() -> None:
    answer = [
        iface("docker0", ("172.17.0.1", "ipv4")),
        iface("br-1a2b", ("172.18.0.1", "ipv4")),
        iface("eth0", ("10.0.0.7", "ipv4")),
    ]
    assert first_address(answer) == "10.0.0.7"
    assert first_address([iface("lo", ("127.0.0.1", "ipv4")), iface("docker0", ("172.17.0.1", "ipv4"))]) is None
