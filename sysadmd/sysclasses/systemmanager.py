"""``sysadm/systemmanager``: the machine's figures, processes, devices and kernel settings.

Request: ``{"action": "<one of the actions below>", …}``; reply ``{"<action>": result}``.
Every value is a string, as upstream sends it (sizes in MiB unless said).

=================  ======  ==========================================================
action             access  result
=================  ======  ==========================================================
systeminfo         read    arch, systemversion, kernelversion, kernelident, hostname,
                           uptime, cputype, cpucores, totalmem (+ ours: uptime_seconds,
                           loadavg, disks)
memorystats        read    active, inactive, cache, wired, free (+ total, available)
cpupercentage      read    cpuN: {busy}, busytotal
cputemps           read    {sensor: "45.0C"}
externalmounts     read    {"/dev/…": {type, filesystem, path}}
procinfo           read    {pid: {username, thr, pri, nice, size, res, state, cpu, time,
                           wcpu, command}}
deviceinfo         read    {PCI address: {vendor, device, class, subclass, driver, …}}
batteryinfo        read    battery "true"/"false" [, level, status, timeleft]
getsysctl          read    sysctl: name or names → {name: value}
sysctllist         read    {name: {value, type}} (writable settings only, as upstream)
killproc           full    pid, signal (HUP INT QUIT ABRT KILL ALRM TERM; KILL default)
                           → the request's args
setsysctl          full    sysctl, value → {sysctl, value, response}
halt, reboot       full    {"response": "true"}; refused unless ALLOW_POWER_OFF=true
=================  ======  ==========================================================

Sysctl names are ``/proc/sys`` paths with dots (``vm.swappiness``): components of
letters, digits, ``_`` and ``-`` only (so no ``..`` and no slashes), at most
``MAX_SYSCTL_NAME`` characters.  Deviations from upstream: failures are error replies
(upstream answered ``{"error":…}`` inside a success); killproc refuses pid 1 and the
daemon itself; getsysctl refuses when none of the names exists.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
from typing import Any, Dict, Optional

import psutil
from twisted.internet import defer, threads

from sysadmd.wire.envelope import ApiError, type_name
from sysadmd.session import Session
from sysadmd.sysclasses import readings
from sysadmd.sysclasses.common import ActionTable, names_arg, run_tool, spawn, text_arg

SYSCTL_ROOT = "/proc/sys"
MAX_SYSCTL_NAME = 256
MAX_SYSCTL_NAMES = 256
MAX_SYSCTL_VALUE = 4096  # bytes read from, or written to, one /proc/sys file
MAX_SYSCTL_LIST = 20000
_COMPONENT = re.compile(r"[A-Za-z0-9_-]+")
MAX_PID = 4194304  # PID_MAX_LIMIT on 64-bit Linux
SIGNALS = {"HUP": signal.SIGHUP, "INT": signal.SIGINT, "QUIT": signal.SIGQUIT, "ABRT": signal.SIGABRT,
           "KILL": signal.SIGKILL, "ALRM": signal.SIGALRM, "TERM": signal.SIGTERM}
POWER_COMMANDS = {"halt": ["shutdown", "-h", "now"], "reboot": ["shutdown", "-r", "now"]}
PCI_ROOT = "/sys/bus/pci/devices"
POWER_SUPPLY_ROOT = "/sys/class/power_supply"
# PCI base classes (the first byte of the class code) by the names pciconf and lspci use.
PCI_CLASSES = {
    0x00: "old", 0x01: "mass storage", 0x02: "network", 0x03: "display", 0x04: "multimedia",
    0x05: "memory", 0x06: "bridge", 0x07: "simple comms", 0x08: "base peripheral", 0x09: "input device",
    0x0a: "docking station", 0x0b: "processor", 0x0c: "serial bus", 0x0d: "wireless", 0x0e: "intelligent io",
    0x0f: "satellite comms", 0x10: "encrypt/decrypt", 0x11: "dasp", 0x12: "processing accelerator",
    0x13: "non-essential instrumentation",
}


def available(config: Any) -> bool:
    """Linux ``/proc`` with the kernel settings tree (a FreeBSD host has neither)."""
    return os.path.isfile("/proc/stat") and os.path.isdir(SYSCTL_ROOT)


# --- sysctl names -------------------------------------------------------------------------

def sysctl_path(name: str, root: str = SYSCTL_ROOT) -> str:
    """The /proc/sys file of a dotted *name*; 400 naming what is wrong with it."""
    if len(name) > MAX_SYSCTL_NAME:
        raise ApiError("400", f"sysctl name is {len(name)} characters; at most {MAX_SYSCTL_NAME} are accepted")
    parts = name.split(".")
    if not all(_COMPONENT.fullmatch(p) for p in parts):
        raise ApiError("400", f"sysctl name {name!r} is not dotted words of letters, digits, '_' and '-' "
                              "(e.g. vm.swappiness)")
    return os.path.join(root, *parts)


def _read_value(path: str, public_only: bool = False) -> Optional[str]:
    """The value of one setting (whitespace runs made single spaces), or None.

    *public_only*: only settings every local user may read (mode o+r); the daemon reads
    as root, and a limited user must not learn more than ``sysctl`` would tell them.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode) or (public_only and not mode & stat.S_IROTH):
            return None
        data = os.read(fd, MAX_SYSCTL_VALUE)
    except OSError:
        return None  # write-only settings (vm.drop_caches) and the like
    finally:
        os.close(fd)
    return " ".join(data.decode("utf-8", "replace").split())


def sysctl_type(value: str) -> str:
    return "integer" if value and all(re.fullmatch(r"-?\d+", v) for v in value.split()) else "string"


def list_sysctls(root: str = SYSCTL_ROOT, limit: int = MAX_SYSCTL_LIST,
                 public_only: bool = False) -> Dict[str, Dict[str, str]]:
    """Every writable, readable setting under *root* (one file system: not binfmt_misc)."""
    out: Dict[str, Dict[str, str]] = {}
    device = os.stat(root).st_dev
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if _COMPONENT.fullmatch(d)
                         and os.lstat(os.path.join(directory, d)).st_dev == device)
        relative = os.path.relpath(directory, root)
        prefix = "" if relative == "." else relative.replace(os.sep, ".") + "."
        for name in sorted(files):
            if not _COMPONENT.fullmatch(name):
                continue  # e.g. interface names with dots: not reachable by a dotted name
            path = os.path.join(directory, name)
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                continue
            if not (stat.S_ISREG(mode) and mode & 0o200 and mode & 0o444):
                continue
            value = _read_value(path, public_only)
            if value is None:
                continue
            out[prefix + name] = {"value": value, "type": sysctl_type(value)}
            if len(out) >= limit:
                return out
    return out


def write_sysctl(name: str, value: str, root: str = SYSCTL_ROOT) -> Dict[str, str]:
    path = sysctl_path(name, root)
    before = _read_value(path)
    if before is None and not os.path.isfile(path):
        raise ApiError("400", f"no sysctl named {name} (no file {path})")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except OSError as e:
        raise ApiError("400", f"cannot write sysctl {name}: {e.strerror}") from None
    try:
        os.write(fd, value.encode("utf-8"))
    except OSError as e:
        raise ApiError("400", f"sysctl {name} refused {value!r}: {e.strerror}") from None
    finally:
        os.close(fd)
    after = _read_value(path)
    return {"sysctl": name, "value": value, "response": f"{name}: {before} -> {after}"}


# --- mounts, devices, batteries -----------------------------------------------------------------

def _unescape_mount(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def device_kind(device: str, sys_block: str = "/sys/class/block") -> str:
    """Upstream's device types (USB, HDRIVE, SDCARD, DVD, UNKNOWN) for a Linux device node."""
    name = os.path.basename(device)
    if name.startswith("sr"):
        return "DVD"
    if name.startswith("mmcblk"):
        return "SDCARD"
    try:
        target = os.path.realpath(os.path.join(sys_block, name))
    except OSError:
        target = ""
    if "/usb" in target:
        return "USB"
    if name.startswith(("sd", "nvme", "vd", "hd", "xvd")):
        return "HDRIVE"
    return "UNKNOWN"


def external_mounts(mounts_text: str) -> Dict[str, Dict[str, str]]:
    out: Dict[str, Dict[str, str]] = {}
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) < 3 or not fields[0].startswith("/dev/"):
            continue
        device = _unescape_mount(fields[0])
        out[device] = {"type": device_kind(device), "filesystem": fields[2], "path": _unescape_mount(fields[1])}
    return out


def _sysfs(path: str) -> str:
    try:
        return readings.read_text(path, 4096).strip()
    except OSError:
        return ""


def pci_devices(root: str = PCI_ROOT) -> Dict[str, Dict[str, str]]:
    """``{address: {vendor_id, device_id, class, subclass_id, driver}}`` from sysfs."""
    out: Dict[str, Dict[str, str]] = {}
    try:
        addresses = sorted(os.listdir(root))
    except OSError:
        return out
    for address in addresses[:4096]:
        base = os.path.join(root, address)
        code = _sysfs(os.path.join(base, "class"))
        info = {"vendor_id": _sysfs(os.path.join(base, "vendor")), "device_id": _sysfs(os.path.join(base, "device"))}
        try:
            number = int(code, 16)
            info["class"] = PCI_CLASSES.get(number >> 16, f"0x{number >> 16:02x}")
            info["subclass_id"] = f"0x{(number >> 8) & 0xff:02x}"
        except ValueError:
            pass
        driver = os.path.join(base, "driver")
        if os.path.islink(driver):
            info["driver"] = os.path.basename(os.readlink(driver))
        out[address] = info
    return out


def parse_lspci(text: str) -> Dict[str, Dict[str, str]]:
    """``lspci -vmm -D`` records → ``{slot: {vendor, device, subclass, …}}`` (names)."""
    out: Dict[str, Dict[str, str]] = {}
    for record in text.split("\n\n"):
        fields = {}
        for line in record.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        slot = fields.get("Slot")
        if not slot:
            continue
        names = {"vendor": fields.get("Vendor", ""), "device": fields.get("Device", ""),
                 "subclass": fields.get("Class", "")}
        if fields.get("SVendor"):
            names["subvendor"] = fields["SVendor"]
        if fields.get("SDevice"):
            names["subdevice"] = fields["SDevice"]
        if fields.get("Rev"):
            names["revision"] = fields["Rev"]
        out[slot] = {k: v for k, v in names.items() if v}
    return out


def battery_info(root: str = POWER_SUPPLY_ROOT) -> Dict[str, str]:
    """Upstream's batteryinfo from the first battery under *root*."""
    try:
        supplies = sorted(os.listdir(root))
    except OSError:
        supplies = []
    batteries = [s for s in supplies if _sysfs(os.path.join(root, s, "type")) == "Battery"
                 and _sysfs(os.path.join(root, s, "present")) != "0"]
    if not batteries:
        return {"battery": "false"}
    base = os.path.join(root, batteries[0])
    level = _sysfs(os.path.join(base, "capacity"))
    status = _sysfs(os.path.join(base, "status"))
    # Upstream's status is the AC line as apm reports it: on battery → "offline".
    kind = {"Discharging": "offline", "Charging": "charging", "Full": "charging",
            "Not charging": "charging"}.get(status, "unknown")
    out = {"battery": "true", "level": level if level.isdigit() else "-1", "status": kind, "timeleft": "-1"}
    seconds = _sysfs(os.path.join(base, "time_to_empty_now"))
    if seconds.isdigit():
        out["timeleft"] = seconds
    elif kind == "offline":
        for now_name, rate_name in (("energy_now", "power_now"), ("charge_now", "current_now")):
            now, rate = _sysfs(os.path.join(base, now_name)), _sysfs(os.path.join(base, rate_name))
            if now.isdigit() and rate.isdigit() and int(rate) > 0:
                out["timeleft"] = str(int(int(now) * 3600 / int(rate)))
                break
    return out


def _full_access(session: Session) -> bool:
    return session.identity is not None and session.identity.full_access


# --- the class --------------------------------------------------------------------------------

class SystemManager:
    """The actions; *host* is the shared :class:`~sysadmd.sysclasses.readings.HostReadings`."""

    def __init__(self, host: readings.HostReadings, reactor: Any, *, allow_power_off: bool,
                 sysctl_root: str = SYSCTL_ROOT, own_pid: Optional[int] = None,
                 shutdown: Optional[str] = None):
        self.host = host
        self.shutdown = shutdown  # the shutdown program (default: found on PATH when needed)
        self.reactor = reactor
        self.allow_power_off = allow_power_off
        self.sysctl_root = sysctl_root
        self.own_pid = os.getpid() if own_pid is None else own_pid

    def table(self) -> ActionTable:
        table = ActionTable("systemmanager")
        table.add("systeminfo", lambda s, a: self.host.systeminfo())
        table.add("memorystats", lambda s, a: self.host.memorystats())
        table.add("cpupercentage", lambda s, a: self.host.cpupercentage())
        table.add("procinfo", lambda s, a: self.host.procinfo())
        table.add("cputemps", self.cputemps)
        table.add("externalmounts", self.externalmounts)
        table.add("deviceinfo", self.deviceinfo)
        table.add("batteryinfo", lambda s, a: battery_info())
        table.add("getsysctl", self.getsysctl)
        table.add("sysctllist", self.sysctllist)
        table.add("killproc", self.killproc, full_access=True)
        table.add("setsysctl", self.setsysctl, full_access=True)
        table.add("halt", self.power, full_access=True)
        table.add("reboot", self.power, full_access=True)
        return table

    def cputemps(self, session: Session, args: Dict[str, Any]) -> Dict[str, str]:
        sensors = getattr(psutil, "sensors_temperatures", None)
        return readings.cpu_temperatures(sensors) if sensors is not None else {}

    def externalmounts(self, session: Session, args: Dict[str, Any]) -> Dict[str, Dict[str, str]]:
        return external_mounts(readings.read_text("/proc/self/mounts"))

    def deviceinfo(self, session: Session, args: Dict[str, Any]) -> Any:
        devices = pci_devices()
        lspci = shutil.which("lspci")
        if not lspci:
            return devices

        def merge(result):
            code, out, _err = result
            if code == 0:
                for slot, names in parse_lspci(out).items():
                    if slot in devices:
                        devices[slot].update(names)
            return devices

        return spawn(self.reactor, [lspci, "-vmm", "-D"], timeout=20.0).addCallback(merge)

    def getsysctl(self, session: Session, args: Dict[str, Any]) -> Dict[str, str]:
        names = names_arg(args, "sysctl", max_items=MAX_SYSCTL_NAMES, max_chars=MAX_SYSCTL_NAME)
        out: Dict[str, str] = {}
        public_only = not _full_access(session)
        for name in names:
            value = _read_value(sysctl_path(name, self.sysctl_root), public_only)
            if value is not None:
                out[name] = value
        if not out:
            raise ApiError("400", f"no readable sysctl named {', '.join(names[:8])}"
                                  f"{' …' if len(names) > 8 else ''} under {self.sysctl_root}")
        return out

    def sysctllist(self, session: Session, args: Dict[str, Any]) -> defer.Deferred:
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), list_sysctls, self.sysctl_root,
                                         MAX_SYSCTL_LIST, not _full_access(session))

    def setsysctl(self, session: Session, args: Dict[str, Any]) -> Dict[str, str]:
        name = text_arg(args, "sysctl", max_chars=MAX_SYSCTL_NAME)
        value = args.get("value")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ApiError("400", f"'value' must be a string (or a number), got {type_name(value)}")
        if len(value) > MAX_SYSCTL_VALUE or "\x00" in value:
            raise ApiError("400", f"'value' must be at most {MAX_SYSCTL_VALUE} characters without NUL")
        return write_sysctl(name, value, self.sysctl_root)

    def killproc(self, session: Session, args: Dict[str, Any]) -> Dict[str, Any]:
        raw = args.get("pid")
        if isinstance(raw, bool) or not isinstance(raw, (int, str)) or not re.fullmatch(r"\d{1,10}", str(raw)):
            raise ApiError("400", f"'pid' must be a process id (digits), got {str(raw)[:32]!r}")
        pid = int(raw)
        if pid > MAX_PID:
            raise ApiError("400", f"'pid' {pid} is above the largest Linux process id ({MAX_PID})")
        name = args.get("signal", "KILL")
        if name in (None, ""):
            name = "KILL"
        if not isinstance(name, str) or name not in SIGNALS:
            raise ApiError("400", f"'signal' must be one of {', '.join(SIGNALS)} (default KILL), got {str(name)[:16]!r}")
        if pid <= 1:
            raise ApiError("403", f"killproc refuses pid {pid}: it is init (or every process)")
        if pid == self.own_pid:
            raise ApiError("403", f"killproc refuses pid {pid}: it is this daemon's own process (stop the service instead)")
        try:
            os.kill(pid, SIGNALS[name])
        except ProcessLookupError:
            raise ApiError("400", f"no process with pid {pid}") from None
        except PermissionError:
            raise ApiError("403", f"not permitted to signal pid {pid}") from None
        return {"action": "killproc", "pid": str(pid), "signal": name}

    def power(self, session: Session, args: Dict[str, Any]) -> Any:
        action = args["action"]
        if not self.allow_power_off:
            raise ApiError("403", f"{action} is disabled on this server (ALLOW_POWER_OFF=false in the config)")
        tool = self.shutdown or shutil.which("shutdown")
        if not tool:
            raise ApiError("500", f"{action}: no shutdown command on this host")
        argv = [tool] + POWER_COMMANDS[action][1:]
        return run_tool(self.reactor, argv, timeout=60.0).addCallback(lambda _out: {"response": "true"})


def route(api: Any, host: readings.HostReadings, reactor: Any, config: Any) -> SystemManager:
    """Register ``sysadm/systemmanager`` (read for limited users)."""
    manager = SystemManager(host, reactor, allow_power_off=config.allow_power_off)
    manager.table().route(api, limited="read")
    return manager
