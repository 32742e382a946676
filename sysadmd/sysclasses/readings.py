"""Readings of the host from ``/proc`` and ``/sys``, shared by every session.

:class:`HostReadings` answers ``systeminfo``, ``memorystats``, ``cpupercentage`` and
``procinfo`` from a reading at most ``SYSINFO_CACHE_SECONDS`` old: however many clients
poll, ``/proc`` is read once per period (``reads`` counts the real readings, for tests and
the benchmark).  ``cpupercentage`` is the busy share since the previous reading (a first
reading is taken when the object is built, so the first answer already covers a real
interval instead of upstream's one-second sleep).

Every value keeps upstream's spelling and type (strings; sizes in MiB); the Linux
sources of each field are listed in docs/protocol.md.
"""

from __future__ import annotations

import os
import platform
import pwd
import socket
from typing import Any, Callable, Dict, List, Optional, Tuple

from sysadmd.events.systemstate import sample_host

MIB = 1024 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Linux process states, in the words FreeBSD's top uses where one fits.
PROCESS_STATES = {"R": "RUN", "S": "sleep", "D": "disk", "Z": "zomb", "T": "stop", "t": "trace",
                  "I": "idle", "X": "dead", "W": "paging", "P": "park"}


def read_text(path: str, limit: int = 1 << 20) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", "replace")


# --- pure parsers (unit-tested) ---------------------------------------------------------------

def parse_meminfo(text: str) -> Dict[str, int]:
    """``/proc/meminfo`` as ``{field: bytes}``."""
    out: Dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[name.strip()] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return out


def memory_figures(info: Dict[str, int]) -> Dict[str, str]:
    """Upstream's memorystats keys (MiB as strings) from /proc/meminfo, plus total and available."""
    def mib(*names: str) -> str:
        return str(sum(info.get(n, 0) for n in names) // MIB)

    return {
        "active": mib("Active"),
        "inactive": mib("Inactive"),
        "cache": mib("Cached", "Buffers"),
        # FreeBSD's "wired" is memory that can never be paged out: on Linux the
        # unevictable pages and the kernel's own unreclaimable memory.
        "wired": mib("Unevictable", "SUnreclaim", "KernelStack", "PageTables"),
        "free": mib("MemFree"),
        "total": mib("MemTotal"),
        "available": mib("MemAvailable"),
    }


def parse_cpu_times(text: str) -> Dict[str, Tuple[int, int]]:
    """``/proc/stat`` → ``{"cpu0": (busy ticks, total ticks), …, "cpu": (…)}``."""
    out: Dict[str, Tuple[int, int]] = {}
    for line in text.splitlines():
        if not line.startswith("cpu"):
            continue
        parts = line.split()
        values = [int(v) for v in parts[1:9] if v.isdigit()]  # user … steal (guest is inside user)
        if len(values) < 4:
            continue
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        total = sum(values)
        out[parts[0]] = (total - idle, total)
    return out


def cpu_busy(before: Dict[str, Tuple[int, int]], after: Dict[str, Tuple[int, int]]) -> Dict[str, Any]:
    """Upstream's cpupercentage: ``{"cpu1":{"busy":"12"}, …, "busytotal":"7"}`` (CPUs from 1)."""
    def busy(name: str) -> int:
        b0, t0 = before.get(name, (0, 0))
        b1, t1 = after[name]
        dt = t1 - t0
        return int(round(100.0 * (b1 - b0) / dt)) if dt > 0 else 0

    out: Dict[str, Any] = {}
    cpus = sorted((n for n in after if n != "cpu"), key=lambda n: int(n[3:]))
    for name in cpus:
        out[f"cpu{int(name[3:]) + 1}"] = {"busy": str(busy(name))}
    if "cpu" in after:
        out["busytotal"] = str(busy("cpu"))
    return out


def parse_proc_stat(text: str) -> Optional[Dict[str, Any]]:
    """The fields of ``/proc/<pid>/stat`` we show (the name may hold spaces and parentheses)."""
    head, sep, rest = text.rpartition(")")
    if not sep:
        return None
    fields = rest.split()
    if len(fields) < 37:
        return None
    return {
        "name": head.partition("(")[2], "state": fields[0], "utime": int(fields[11]), "stime": int(fields[12]),
        "priority": int(fields[15]), "nice": int(fields[16]), "threads": int(fields[17]),
        "starttime": int(fields[19]), "vsize": int(fields[20]), "rss": int(fields[21]) * PAGE_SIZE,
        "processor": int(fields[36]),
    }


def top_size(n: int) -> str:
    """A size as FreeBSD's top prints it: ``812K``, ``14M``, ``2G``."""
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20)):
        if n >= 10 * scale:
            return f"{n // scale}{unit}"
    return f"{n // 1024}K"


def top_time(seconds: float) -> str:
    """CPU time as top prints it: ``M:SS`` (``H:MMh`` past 1000 minutes)."""
    minutes, secs = divmod(int(seconds), 60)
    if minutes >= 1000:
        return f"{minutes // 60}:{minutes % 60:02d}h"
    return f"{minutes}:{secs:02d}"


def uptime_text(seconds: int) -> str:
    """Upstream's uptime field (``uptime`` output words 2-5): ``up 3 days 4:05``."""
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    words = ["up"]
    if days:
        words.append(f"{days} day{'s' if days != 1 else ''}")
    words.append(f"{hours}:{minutes:02d}" if hours else f"{minutes} min{'s' if minutes != 1 else ''}")
    return " ".join(words)


def os_release(path: str = "/etc/os-release") -> str:
    try:
        text = read_text(path, 64 * 1024)
    except OSError:
        return f"{platform.system()} {platform.release()}"
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"').strip("'")
    return values.get("PRETTY_NAME") or f"{values.get('NAME', platform.system())} {values.get('VERSION', '')}".strip()


def cpu_model(cpuinfo: str) -> str:
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("model name", "Model", "Processor", "cpu model", "uarch"):
            return value.strip()
    return platform.processor() or platform.machine()


# --- the shared readings ----------------------------------------------------------------------

class HostReadings:
    """Cached host readings; ``clock`` has ``seconds()`` (the reactor, or a Clock in tests)."""

    def __init__(self, clock: Any, ttl: float, *, proc: str = "/proc"):
        self.clock = clock
        self.ttl = float(ttl)
        self.proc = proc
        self.reads: Dict[str, int] = {}
        self._cache: Dict[str, Tuple[float, Any]] = {}
        self._cpu_before = parse_cpu_times(read_text(f"{proc}/stat"))
        self._proc_before: Dict[int, Tuple[int, int]] = {}  # pid -> (starttime, cpu ticks)
        self._proc_at: Optional[float] = None

    def _cached(self, name: str, compute: Callable[[], Any]) -> Any:
        now = self.clock.seconds()
        hit = self._cache.get(name)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        value = compute()
        self.reads[name] = self.reads.get(name, 0) + 1
        self._cache[name] = (now, value)
        return value

    def systeminfo(self) -> Dict[str, Any]:
        return self._cached("systeminfo", self._systeminfo)

    def memorystats(self) -> Dict[str, str]:
        return self._cached("memorystats", lambda: memory_figures(parse_meminfo(read_text(f"{self.proc}/meminfo"))))

    def cpupercentage(self) -> Dict[str, Any]:
        return self._cached("cpupercentage", self._cpupercentage)

    def procinfo(self) -> Dict[str, Dict[str, str]]:
        return self._cached("procinfo", self._procinfo)

    def _cpupercentage(self) -> Dict[str, Any]:
        after = parse_cpu_times(read_text(f"{self.proc}/stat"))
        out = cpu_busy(self._cpu_before, after)
        self._cpu_before = after
        return out

    def _systeminfo(self) -> Dict[str, Any]:
        uname = os.uname()
        host = sample_host()  # the reading the system-state event is made of
        memory = parse_meminfo(read_text(f"{self.proc}/meminfo"))
        try:
            model = cpu_model(read_text(f"{self.proc}/cpuinfo"))
        except OSError:
            model = platform.machine()
        return {
            "arch": uname.machine,
            "systemversion": os_release(),
            "kernelversion": uname.release,
            "kernelident": uname.version,
            "hostname": socket.gethostname(),
            "uptime": uptime_text(host.uptime),
            "cputype": model,
            "cpucores": str(os.cpu_count() or 1),
            "totalmem": str(memory.get("MemTotal", 0) // MIB),
            # Ours (numbers): what `sysadm info` shows beside upstream's fields.
            "uptime_seconds": host.uptime,
            "loadavg": list(host.load),
            "disks": host.disks,
        }

    def _procinfo(self) -> Dict[str, Dict[str, str]]:
        now = self.clock.seconds()
        elapsed = (now - self._proc_at) if self._proc_at is not None else None
        try:
            boot_ticks = float(read_text(f"{self.proc}/uptime").split()[0]) * CLOCK_TICKS
        except (OSError, ValueError, IndexError):
            boot_ticks = 0.0
        names: Dict[int, str] = {}
        out: Dict[str, Dict[str, str]] = {}
        seen: Dict[int, Tuple[int, int]] = {}
        for entry in os.listdir(self.proc):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                stat = parse_proc_stat(read_text(f"{self.proc}/{entry}/stat", 4096))
                uid = os.stat(f"{self.proc}/{entry}").st_uid
                cmdline = read_text(f"{self.proc}/{entry}/cmdline", 4096)
            except OSError:
                continue  # exited meanwhile
            if stat is None:
                continue
            ticks = stat["utime"] + stat["stime"]
            seen[pid] = (stat["starttime"], ticks)
            previous = self._proc_before.get(pid)
            if elapsed and elapsed > 0 and previous is not None and previous[0] == stat["starttime"]:
                wcpu = 100.0 * (ticks - previous[1]) / CLOCK_TICKS / elapsed
            else:  # first sight of this process: its average since it started
                age = boot_ticks - stat["starttime"]
                wcpu = 100.0 * ticks / age if age > 0 else 0.0
            if uid not in names:
                try:
                    names[uid] = pwd.getpwuid(uid).pw_name
                except KeyError:
                    names[uid] = str(uid)
            args = cmdline.replace("\x00", " ").strip()
            out[entry] = {
                "username": names[uid],
                "thr": str(stat["threads"]),
                "pri": str(stat["priority"]),
                "nice": str(stat["nice"]),
                "size": top_size(stat["vsize"]),
                "res": top_size(stat["rss"]),
                "state": PROCESS_STATES.get(stat["state"], stat["state"]),
                "cpu": str(stat["processor"]),
                "time": top_time(ticks / CLOCK_TICKS),
                "wcpu": f"{wcpu:.2f}%",
                "command": args or f"[{stat['name']}]",
            }
        self._proc_before = seen
        self._proc_at = now
        return out


def cpu_temperatures(sensors: Callable[[], Dict[str, List[Any]]]) -> Dict[str, str]:
    """Upstream's cputemps: ``{"cpu0":"45.0C", "acpitz0":"38.0C"}`` from psutil's sensors."""
    out: Dict[str, str] = {}
    for chip, readings in sorted(sensors().items()):
        for index, reading in enumerate(readings):
            label = (reading.label or "").strip()
            if chip == "coretemp" and label.startswith("Core "):
                key = f"cpu{label[5:].strip()}"
            elif chip == "coretemp" and label.startswith("Package id"):
                key = f"package{label[10:].strip()}"
            else:
                key = f"{chip}{index}"
            if reading.current is not None:
                out[key] = f"{reading.current:.1f}C"
    return out
