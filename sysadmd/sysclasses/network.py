"""``sysadm/network``: the host's network devices and their configured settings (read-only).

Actions and replies (unwrapped, as upstream's network class answers)::

    {"action":"list-devices"} →
        {dev:{ipv4,ipv6,netmask,description,MAC,status,is_active,is_dhcp,is_wireless}}
    {"action":"list-settings"} →
        {dev:{device,associated_device,use_dhcp,static_ipv4,static_ipv6,static_netmask,
              static_gateway,source}}

``list-devices`` reads psutil (addresses, flags) and ``/sys/class/net`` (carrier, driver,
wireless); ``status`` is ``"active"`` with a carrier, else ``"no carrier"``; ``is_dhcp`` is
"true" when a DHCP lease or configuration names the device (dhclient, NetworkManager,
systemd-networkd, dhcpcd lease files, or ``inet dhcp`` in ``/etc/network/interfaces``),
so it can be "false" for a device whose DHCP client leaves no trace we know.
``list-settings`` reads whichever of ifupdown (``/etc/network/interfaces`` and what it
``source``s), NetworkManager keyfiles (``/etc/NetworkManager/system-connections``) and
systemd-networkd (``/etc/systemd/network/*.network``) is present; ``source`` (our
addition) says which one each entry came from.  Nothing is written.
"""

from __future__ import annotations

import configparser
import glob
import ipaddress
import os
import socket
from typing import Any, Dict, List

from sysadmd.session import Session
from sysadmd.sysclasses.common import ActionTable

SYS_NET = "/sys/class/net"
MAX_CONFIG_BYTES = 1 << 20
MAX_FILES = 512


def available(config: Any) -> bool:
    return os.path.isdir(SYS_NET)


def _read(path: str, limit: int = 4096) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _flag(value: bool) -> str:
    return "true" if value else "false"


def dhcp_devices(root: str = "/") -> set:
    """Devices some DHCP client has a lease or a configuration for."""
    found = set()
    join = lambda *p: os.path.join(root, *p)  # noqa: E731
    for path in glob.glob(join("var/lib/dhcp/dhclient*.lease*"))[:MAX_FILES]:
        for line in _read(path, MAX_CONFIG_BYTES).splitlines():
            line = line.strip()
            if line.startswith("interface "):
                found.add(line.split('"')[1] if '"' in line else line.split()[1].rstrip(";"))
    for path in glob.glob(join("var/lib/NetworkManager/*.lease"))[:MAX_FILES]:
        name = os.path.basename(path)[:-len(".lease")]
        found.add(name.rsplit("-", 1)[-1])  # internal1-<uuid>-<dev>.lease
    for path in glob.glob(join("var/lib/dhcpcd/*.lease"))[:MAX_FILES]:
        found.add(os.path.basename(path)[:-len(".lease")].split("-")[-1])
    leases = glob.glob(join("run/systemd/netif/leases/*"))[:MAX_FILES]
    if leases:
        by_index = {str(i): n for i, n in socket.if_nameindex()}
        for path in leases:
            name = by_index.get(os.path.basename(path))
            if name:
                found.add(name)
    for entry in ifupdown_settings(root).values():
        if entry["use_dhcp"] == "true":
            found.add(entry["device"])
    return found


def list_devices(root: str = "/") -> Dict[str, Dict[str, str]]:
    import psutil

    addrs = psutil.net_if_addrs()
    stats = psutil.net_if_stats()
    dhcp = dhcp_devices(root)
    out = {}
    for dev in sorted(set(addrs) | set(stats)):
        ipv4 = ipv6 = netmask = mac = ""
        for a in addrs.get(dev, []):
            if a.family == socket.AF_INET and not ipv4:
                ipv4, netmask = a.address, a.netmask or ""
            elif a.family == socket.AF_INET6 and not ipv6:
                ipv6 = a.address.split("%", 1)[0]
            elif a.family == psutil.AF_LINK and not mac:
                mac = a.address
        sysdir = os.path.join(SYS_NET, dev)
        wireless = os.path.isdir(os.path.join(sysdir, "wireless")) or os.path.exists(os.path.join(sysdir, "phy80211"))
        carrier = _read(os.path.join(sysdir, "carrier")) == "1"
        st = stats.get(dev)
        up = bool(st and st.isup)
        out[dev] = {"ipv4": ipv4, "ipv6": ipv6, "netmask": netmask, "description": _describe(dev, sysdir, wireless),
                    "MAC": mac, "status": "active" if up and carrier else "no carrier", "is_active": _flag(up),
                    "is_dhcp": _flag(dev in dhcp), "is_wireless": _flag(wireless)}
    return out


def _describe(dev: str, sysdir: str, wireless: bool) -> str:
    if dev == "lo" or _read(os.path.join(sysdir, "type")) == "772":
        return "Loopback"
    link = os.path.join(sysdir, "device", "driver")
    driver = os.path.basename(os.path.realpath(link)) if os.path.exists(link) else ""
    kind = "Wireless" if wireless else (_uevent(sysdir).get("DEVTYPE", "").capitalize() or "Ethernet")
    if driver:
        return f"{kind} ({driver})"
    return f"Virtual {kind.lower()} device"


def _uevent(sysdir: str) -> Dict[str, str]:
    out = {}
    for line in _read(os.path.join(sysdir, "uevent")).splitlines():
        key, _, value = line.partition("=")
        out[key] = value
    return out


# --- configured settings --------------------------------------------------------------------

def _setting(dev: str, source: str) -> Dict[str, str]:
    return {"device": dev, "associated_device": "", "use_dhcp": "false", "static_ipv4": "", "static_ipv6": "",
            "static_netmask": "", "static_gateway": "", "source": source}


def _split_address(text: str, entry: Dict[str, str]) -> None:
    try:
        iface = ipaddress.ip_interface(text.strip())
    except ValueError:
        return
    if iface.version == 4:
        if not entry["static_ipv4"]:
            entry["static_ipv4"] = str(iface.ip)
            if "/" in text:
                entry["static_netmask"] = str(iface.network.netmask)
    elif not entry["static_ipv6"]:
        entry["static_ipv6"] = str(iface.ip)


def ifupdown_settings(root: str = "/") -> Dict[str, Dict[str, str]]:
    out: Dict[str, Dict[str, str]] = {}
    pending = [os.path.join(root, "etc/network/interfaces")]
    seen = 0
    current = None
    while pending and seen < MAX_FILES:
        path = pending.pop(0)
        seen += 1
        for raw in _read(path, MAX_CONFIG_BYTES).splitlines():
            words = raw.split("#", 1)[0].split()
            if not words:
                continue
            key = words[0]
            if key in ("source", "source-directory") and len(words) > 1:
                target = words[1] if words[1].startswith("/") else os.path.join(os.path.dirname(path), words[1])
                target = os.path.join(root, target.lstrip("/")) if root != "/" and words[1].startswith("/") else target
                pattern = os.path.join(target, "*") if key == "source-directory" else target
                pending.extend(sorted(p for p in glob.glob(pattern) if os.path.isfile(p)))
            elif key == "iface" and len(words) >= 4:
                dev, method = words[1], words[3]
                current = out.setdefault(dev, _setting(dev, "ifupdown"))
                if method == "dhcp":
                    current["use_dhcp"] = "true"
            elif current is not None and len(words) > 1:
                if key == "address":
                    _split_address(words[1], current)
                elif key == "netmask":
                    current["static_netmask"] = words[1]
                elif key == "gateway" and not current["static_gateway"]:
                    current["static_gateway"] = words[1]
                elif key in ("bridge_ports", "bond-slaves", "vlan-raw-device", "bridge-ports"):
                    current["associated_device"] = " ".join(words[1:])
            if key in ("auto", "allow-hotplug", "mapping"):
                current = None if key == "mapping" else current
    return out


def networkmanager_settings(root: str = "/") -> Dict[str, Dict[str, str]]:
    out: Dict[str, Dict[str, str]] = {}
    for path in sorted(glob.glob(os.path.join(root, "etc/NetworkManager/system-connections/*")))[:MAX_FILES]:
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            parser.read_string(_read(path, MAX_CONFIG_BYTES))
        except configparser.Error:
            continue
        dev = parser.get("connection", "interface-name", fallback="") or parser.get("connection", "id", fallback="")
        if not dev:
            continue
        entry = out.setdefault(dev, _setting(dev, "NetworkManager"))
        entry["associated_device"] = parser.get("connection", "master", fallback="")
        entry["use_dhcp"] = _flag(parser.get("ipv4", "method", fallback="auto") == "auto")
        for section in ("ipv4", "ipv6"):
            for key in ("address1", "addresses1", "address", "addresses"):
                value = parser.get(section, key, fallback="")
                if value:
                    address, _, gateway = value.partition(",")
                    _split_address(address, entry)
                    if gateway and section == "ipv4" and not entry["static_gateway"]:
                        entry["static_gateway"] = gateway.strip()
                    break
            gateway = parser.get(section, "gateway", fallback="")
            if gateway and not entry["static_gateway"]:
                entry["static_gateway"] = gateway
        if parser.has_section("wifi"):
            entry["wifi_ssid"] = parser.get("wifi", "ssid", fallback="")
    return out


def networkd_settings(root: str = "/") -> Dict[str, Dict[str, str]]:
    out: Dict[str, Dict[str, str]] = {}
    files: List[str] = []
    for directory in ("etc/systemd/network", "run/systemd/network", "usr/lib/systemd/network", "lib/systemd/network"):
        files += glob.glob(os.path.join(root, directory, "*.network"))
    for path in sorted(files)[:MAX_FILES]:
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        parser.optionxform = str  # type: ignore[assignment]
        try:
            parser.read_string(_read(path, MAX_CONFIG_BYTES))
        except configparser.Error:
            continue
        names = parser.get("Match", "Name", fallback="").split()
        for dev in names:
            if any(ch in dev for ch in "*?["):
                continue
            entry = out.setdefault(dev, _setting(dev, "systemd-networkd"))
            entry["use_dhcp"] = _flag(parser.get("Network", "DHCP", fallback="no").lower() in ("yes", "ipv4", "true", "both"))
            for address in parser.get("Network", "Address", fallback="").split():
                _split_address(address, entry)
            entry["static_gateway"] = parser.get("Network", "Gateway", fallback="").split()[0] \
                if parser.get("Network", "Gateway", fallback="").split() else ""
            entry["associated_device"] = parser.get("Network", "Bridge", fallback="") or parser.get("Network", "Bond", fallback="")
    return out


def list_settings(root: str = "/") -> Dict[str, Dict[str, str]]:
    merged: Dict[str, Dict[str, str]] = {}
    for reader in (networkmanager_settings, networkd_settings, ifupdown_settings):
        for dev, entry in reader(root).items():
            merged.setdefault(dev, entry)
    return merged


class Network:
    def __init__(self, root: str = "/"):
        self.root = root

    def devices(self, session: Session, args: Dict[str, Any]):
        return list_devices(self.root)  # a few small /sys reads: quick enough for the reactor

    def settings(self, session: Session, args: Dict[str, Any]):
        return list_settings(self.root)


def route(api: Any, reactor: Any, config: Any) -> Network:
    network = Network()
    table = ActionTable("network")
    table.add("list-devices", network.devices, wrap=False)
    table.add("list-settings", network.settings, wrap=False)
    table.route(api, limited="read")
    return network


if __name__ == "__main__":  # used by the tests inside a network namespace
    import json
    import sys

    print(json.dumps(list_devices(sys.argv[1] if len(sys.argv) > 1 else "/")))
