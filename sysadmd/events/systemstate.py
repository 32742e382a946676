"""The ``system-state`` event: what an operator checks first about this machine.

Event args (keys sorted on the wire)::

    {"cpus":2,
     "disks":{"/":{"device":"/dev/vda","fstype":"ext4","percent":41.0,"total":…,"used":…}},
     "hostname":"host1","hostnamechanged":"true",
     "load":{"15min":0.3,"1min":0.5,"5min":0.4},
     "memory":{"percent":12.5,"total":…,"used":…},
     "priority":"5 - Warning","alerts":["memory 93.1% >= 90%"],
     "uptime":86400,
     "zpools":{"tank":{"alloc":"13.1G","altroot":"-","capacity":"12%","dedup":"1.00x",
                       "expandsz":"-","frag":"6%","free":"93.9G","health":"ONLINE","size":"107G"}}}

Upstream's fields (``hostname``, ``hostnamechanged``, ``zpools``, ``priority``) keep their
upstream spelling and string values, because the Qt client reads them.  The Linux figures
are ours and are JSON numbers (bytes, percents, seconds, load averages), so scripts need
no parsing.  ``hostnamechanged`` appears only in the event where the name changed;
``zpools`` only when ``zpool`` exists and lists pools; ``alerts`` only when the priority
is above 0.

Priority is the highest of: load per core ≥ STATE_LOAD_WARN → 5, ≥ STATE_LOAD_CRIT → 8;
memory % and any disk % against STATE_*_WARN → 5 / STATE_*_CRIT → 8; a pool not ONLINE → 9;
a pool over 90% full → 6; a hostname change → 3.  The label follows upstream's
DisplayPriority: 0-2 Information, 3-5 Warning, 6-8 Critical, 9-10 Urgent.

Schedule: one event at start, then every SYSTEM_STATE_INTERVAL seconds; between them the
host is sampled cheaply every few seconds and an event goes out at once when the
priority or the hostname changes.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import psutil
from twisted.application import service
from twisted.internet import defer, error, protocol, task
from twisted.logger import Logger

log = Logger()

CHECK_TARGET = 5.0  # seconds between cheap samples (adjusted to divide the interval)
ZPOOL_REFRESH = 30.0  # seconds between `zpool list` runs, at most
ZPOOL_TIMEOUT = 10.0  # a hung `zpool` is killed after this long
ZPOOL_COLUMNS = ("name", "size", "alloc", "free", "expandsz", "frag", "cap", "dedup", "health", "altroot")
# `zpool list` calls the capacity column "cap"; upstream's event calls it "capacity".
ZPOOL_KEYS = ("size", "alloc", "free", "expandsz", "frag", "capacity", "dedup", "health", "altroot")

# Filesystems that hold no user data; psutil's physical-only listing still shows some.
PSEUDO_FILESYSTEMS = frozenset({
    "autofs", "binfmt_misc", "cgroup", "cgroup2", "configfs", "debugfs", "devpts", "devtmpfs",
    "fusectl", "hugetlbfs", "iso9660", "mqueue", "nsfs", "overlay", "proc", "pstore", "ramfs",
    "securityfs", "squashfs", "sysfs", "tmpfs", "tracefs", "udf",
})

WARNING = 5
CRITICAL = 8
URGENT = 9


def priority_label(level: int) -> str:
    """Upstream's DisplayPriority text, e.g. ``"5 - Warning"``."""
    level = max(0, min(10, int(level)))
    if level <= 2:
        name = "Information"
    elif level <= 5:
        name = "Warning"
    elif level <= 8:
        name = "Critical"
    else:
        name = "Urgent"
    return f"{level} - {name}"


@dataclass(frozen=True)
class Thresholds:
    load_warn: float = 2.0  # 1-minute load per core
    load_crit: float = 4.0
    memory_warn: float = 90.0  # percent
    memory_crit: float = 97.0
    disk_warn: float = 90.0
    disk_crit: float = 97.0

    @classmethod
    def from_config(cls, cfg: Any) -> "Thresholds":
        return cls(cfg.state_load_warn, cfg.state_load_crit, cfg.state_memory_warn,
                   cfg.state_memory_crit, cfg.state_disk_warn, cfg.state_disk_crit)


@dataclass
class HostSample:
    """One cheap reading of the host (psutil, no processes)."""

    hostname: str
    load: Tuple[float, float, float]
    cpus: int
    memory: Dict[str, float]  # total, used (bytes), percent
    disks: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # mount -> figures
    uptime: int = 0
    cpu_percent: Optional[float] = None  # busy share of all CPUs since the previous reading
    network: Dict[str, int] = field(default_factory=dict)  # bytes_recv, bytes_sent: totals, loopback left out


def _network() -> Dict[str, int]:
    received = sent = 0
    try:
        counters = psutil.net_io_counters(pernic=True)
    except OSError:
        return {}
    for name, nic in counters.items():
        if name == "lo":
            continue
        received += nic.bytes_recv
        sent += nic.bytes_sent
    return {"bytes_recv": received, "bytes_sent": sent}


def _uptime() -> int:
    try:
        with open("/proc/uptime") as f:
            return int(float(f.read().split()[0]))
    except (OSError, ValueError, IndexError):
        return max(0, int(time.time() - psutil.boot_time()))


def sample_host() -> HostSample:
    """Read the host with psutil; each call takes well under a millisecond per mount."""
    vm = psutil.virtual_memory()
    disks: Dict[str, Dict[str, Any]] = {}
    for part in psutil.disk_partitions(all=False):
        if part.fstype in PSEUDO_FILESYSTEMS or part.mountpoint in disks:
            continue
        try:
            usage = psutil.disk_usage(part.mountpoint)
        except OSError:
            continue  # unmounted between the listing and the reading
        disks[part.mountpoint] = {"device": part.device, "fstype": part.fstype, "total": usage.total,
                                  "used": usage.used, "percent": round(usage.percent, 1)}
    return HostSample(
        hostname=socket.gethostname(),
        load=tuple(round(x, 2) for x in psutil.getloadavg()),
        cpus=psutil.cpu_count() or 1,
        memory={"total": vm.total, "used": vm.used, "percent": round(vm.percent, 1)},
        disks=disks,
        uptime=_uptime(),
        cpu_percent=round(psutil.cpu_percent(interval=None), 1),
        network=_network(),
    )


def parse_zpool_list(text: str) -> Dict[str, Dict[str, str]]:
    """``zpool list -H -o <ZPOOL_COLUMNS>`` output (tab-separated) → upstream's pool objects."""
    pools: Dict[str, Dict[str, str]] = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) != len(ZPOOL_COLUMNS) or not fields[0]:
            continue
        pools[fields[0]] = dict(zip(ZPOOL_KEYS, (f.strip() for f in fields[1:])))
    return pools


def _percent(text: str) -> Optional[float]:
    try:
        return float(text.rstrip("%"))
    except ValueError:
        return None


def assess(sample: HostSample, zpools: Dict[str, Dict[str, str]], limits: Thresholds,
           hostname_changed: bool) -> Tuple[int, List[str]]:
    """The priority level (0-10) and one sentence per crossed threshold."""
    level, alerts = 0, []

    def raise_to(value: int, why: str) -> None:
        nonlocal level
        level = max(level, value)
        alerts.append(why)

    per_core = sample.load[0] / max(1, sample.cpus)
    for limit, value in ((limits.load_crit, CRITICAL), (limits.load_warn, WARNING)):
        if per_core >= limit:
            raise_to(value, f"load {per_core:.2f} per core >= {limit:g}")
            break
    mem = sample.memory.get("percent", 0.0)
    for limit, value in ((limits.memory_crit, CRITICAL), (limits.memory_warn, WARNING)):
        if mem >= limit:
            raise_to(value, f"memory {mem:g}% >= {limit:g}%")
            break
    for mount, disk in sorted(sample.disks.items()):
        for limit, value in ((limits.disk_crit, CRITICAL), (limits.disk_warn, WARNING)):
            if disk["percent"] >= limit:
                raise_to(value, f"disk {mount} {disk['percent']:g}% >= {limit:g}%")
                break
    for name, pool in sorted(zpools.items()):
        if pool.get("health", "").upper() != "ONLINE":
            raise_to(URGENT, f"pool {name} is {pool.get('health', '?')}")
        cap = _percent(pool.get("capacity", ""))
        if cap is not None and cap > 90:
            raise_to(6, f"pool {name} {cap:g}% full")
    if hostname_changed:
        raise_to(3, f"hostname changed to {sample.hostname}")
    return level, alerts


def state_args(sample: HostSample, zpools: Dict[str, Dict[str, str]], level: int, alerts: List[str],
               hostname_changed: bool) -> Dict[str, Any]:
    args: Dict[str, Any] = {
        "hostname": sample.hostname,
        "priority": priority_label(level),
        "cpus": sample.cpus,
        "load": {"1min": sample.load[0], "5min": sample.load[1], "15min": sample.load[2]},
        "memory": dict(sample.memory),
        "disks": {m: dict(d) for m, d in sample.disks.items()},
        "uptime": sample.uptime,
    }
    if sample.cpu_percent is not None:
        args["cpu"] = {"percent": sample.cpu_percent}
    if sample.network:
        args["network"] = dict(sample.network)
    if hostname_changed:
        args["hostnamechanged"] = "true"
    if zpools:
        args["zpools"] = zpools
    if alerts:
        args["alerts"] = alerts
    return args


class _Collect(protocol.ProcessProtocol):
    def __init__(self, done: defer.Deferred):
        self.done = done
        self.out: List[bytes] = []
        self.size = 0

    def outReceived(self, data: bytes) -> None:
        if self.size < 1 << 20:  # a pool listing is tiny; never hold more than 1 MiB
            self.out.append(data)
            self.size += len(data)

    def processEnded(self, reason) -> None:
        code = reason.value.exitCode if isinstance(reason.value, (error.ProcessDone, error.ProcessTerminated)) else None
        self.done.callback((b"".join(self.out), code))


def run_bounded(reactor: Any, argv: Sequence[str], timeout: float) -> defer.Deferred:
    """Run *argv* (no shell); fires with ``(stdout, exit code)``, killed after *timeout*."""
    done: defer.Deferred = defer.Deferred()
    proto = _Collect(done)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LC_ALL": "C"}
    transport = reactor.spawnProcess(proto, argv[0], list(argv), env=env)
    killer = reactor.callLater(timeout, lambda: transport.signalProcess(signal.SIGKILL))

    def finished(result):
        if killer.active():
            killer.cancel()
        return result

    return done.addBoth(finished)


class ZpoolReader:
    """Reads ``zpool list`` through a child process; ``{}`` on any failure (logged)."""

    def __init__(self, reactor: Any, command: Sequence[str], timeout: float = ZPOOL_TIMEOUT):
        self.reactor = reactor
        self.command = list(command)
        self.timeout = timeout

    @classmethod
    def if_installed(cls, reactor: Any) -> Optional["ZpoolReader"]:
        path = shutil.which("zpool")
        return cls(reactor, [path]) if path else None

    def __call__(self) -> defer.Deferred:
        argv = self.command + ["list", "-H", "-o", ",".join(ZPOOL_COLUMNS)]
        try:
            d = run_bounded(self.reactor, argv, self.timeout)
        except OSError as e:
            log.warn("cannot run {argv[0]}: {e}", argv=argv, e=e)
            return defer.succeed({})

        def parsed(result):
            out, code = result
            if code != 0:
                log.warn("{argv[0]} list exited with {code}", argv=argv, code=code)
                return {}
            return parse_zpool_list(out.decode("utf-8", "replace"))

        return d.addCallback(parsed)


class SystemStateService(service.Service):
    """Publishes system-state at start, every *interval* seconds and on relevant change."""

    name = "system-state"

    def __init__(self, publish: Callable[[Dict[str, Any]], Any], clock: Any, *, interval: float,
                 thresholds: Thresholds, sampler: Callable[[], HostSample] = sample_host,
                 zpools: Optional[Callable[[], defer.Deferred]] = None):
        self.publish = publish
        self.clock = clock
        self.interval = float(interval)
        # Divide the interval evenly so periodic events are not late by up to one check.
        self.check_interval = self.interval / math.ceil(self.interval / CHECK_TARGET)
        self.thresholds = thresholds
        self.sampler = sampler
        self.read_zpools = zpools
        self.zpools: Dict[str, Dict[str, str]] = {}
        self.latest: Optional[Dict[str, Any]] = None
        self._hostname: Optional[str] = None
        self._level: Optional[int] = None
        self._published_at: Optional[float] = None
        self._zpools_at: Optional[float] = None
        self._loop: Optional[task.LoopingCall] = None

    def startService(self) -> None:
        super().startService()
        self._loop = task.LoopingCall(self.check)
        self._loop.clock = self.clock
        self._loop.start(self.check_interval, now=True)

    def stopService(self):
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def check(self) -> defer.Deferred:
        """One cheap sample; publishes when due or when something relevant changed.

        Never fails: an error is logged and the next check runs as usual.
        """
        d = self._refresh_zpools()
        d.addCallback(lambda _: self._sample_and_publish())
        d.addErrback(lambda f: log.failure("system-state sample failed", f))
        return d

    def _refresh_zpools(self) -> defer.Deferred:
        now = self.clock.seconds()
        every = min(ZPOOL_REFRESH, self.interval)
        if self.read_zpools is None or (self._zpools_at is not None and now - self._zpools_at < every - 1e-6):
            return defer.succeed(None)
        self._zpools_at = now

        def got(pools):
            self.zpools = pools or {}

        return self.read_zpools().addCallback(got)

    def _sample_and_publish(self) -> None:
        sample = self.sampler()
        changed = self._hostname is not None and sample.hostname != self._hostname
        self._hostname = sample.hostname
        level, alerts = assess(sample, self.zpools, self.thresholds, changed)
        now = self.clock.seconds()
        due = self._published_at is None or now - self._published_at >= self.interval - self.check_interval / 2
        if not (due or changed or level != self._level):
            return
        if self._level is not None and level != self._level:
            log.info("system-state priority {old} -> {new}: {alerts}", old=priority_label(self._level),
                     new=priority_label(level), alerts="; ".join(alerts) or "all clear")
        self._level = level
        self._published_at = now
        self.latest = state_args(sample, self.zpools, level, alerts, changed)
        self.publish(self.latest)
