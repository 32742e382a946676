"""The account database behind ``sysadm/users``: reading it, and checked argv for the
shadow tools that change it (``useradd``, ``usermod``, ``userdel``, ``groupadd``,
``groupmod``, ``groupdel``, ``chpasswd``).

Reading parses ``<prefix>/etc/passwd``, ``group`` and ``shadow`` directly (one pass,
cached until a file's size or mtime changes), so listing 1,000 accounts costs a file
read, not a process per user.  Every value that reaches an argv is checked here first
(:func:`user_name`, :func:`id_number`, :func:`shell_path`…); a check that fails is an
:class:`~sysadmd.wire.envelope.ApiError` naming the field and what was expected.  Passwords
never go on an argv: :func:`password_input` builds the ``chpasswd`` stdin line.
"""

from __future__ import annotations

import datetime
import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from sysadmd.wire.envelope import ApiError, type_name

# Portable user and group names (POSIX portable filename characters, not starting with
# '-'), at most 32 characters as the shadow tools accept; not all digits (a number would
# be read as an id).
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\Z")
MAX_ID = 2**31 - 2  # highest uid/gid accepted; 0 (root's) is never created or assigned
MAX_COMMENT = 256
MAX_HOME = 1024
MAX_PASSWORD = 512
MAX_MEMBERS = 256
NO_LOGIN_SHELLS = ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _text(value: Any, field: str, limit: int) -> str:
    if not isinstance(value, str):
        raise ApiError("400", f"'{field}' must be a string, got {type_name(value)}")
    if len(value) > limit:
        raise ApiError("400", f"'{field}' is {len(value)} characters; at most {limit} are accepted")
    return value


def user_name(value: Any, field: str = "name") -> str:
    """A user or group name: 1-32 of ``A-Z a-z 0-9 _ . -``, not starting with '-', not all digits."""
    text = _text(value, field, 64)
    if not NAME_RE.match(text) or text.isdigit():
        raise ApiError("400", f"'{field}' {text!r} is not a valid name: 1-32 characters from A-Z a-z 0-9 _ . -, "
                              "not starting with '-' and not all digits")
    return text


def name_list(value: Any, field: str) -> List[str]:
    """A comma-separated string or an array of names (upstream accepts both); may be empty."""
    if isinstance(value, str):
        items: List[Any] = [v for v in value.split(",") if v] if len(value) <= 64 * MAX_MEMBERS else [None] * (MAX_MEMBERS + 1)
    elif isinstance(value, list):
        items = value
    else:
        raise ApiError("400", f"'{field}' must be a string (names separated by commas) or an array of names, "
                              f"got {type_name(value)}")
    if len(items) > MAX_MEMBERS:
        raise ApiError("400", f"'{field}' names more than {MAX_MEMBERS} entries")
    out: List[str] = []
    for i, item in enumerate(items):
        name = user_name(item, f"{field}[{i}]")
        if name not in out:
            out.append(name)
    return out


def id_number(value: Any, field: str) -> int:
    """A uid or gid: an integer (or its decimal string) from 1 to :data:`MAX_ID`."""
    if isinstance(value, str) and value.isdigit() and len(value) <= 10:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError("400", f"'{field}' must be a number from 1 to {MAX_ID}, got {type_name(value)}")
    if not 1 <= value <= MAX_ID:
        raise ApiError("400", f"'{field}' {value} is out of range: 1 to {MAX_ID} (0 is root's and never assigned)")
    return value


def group_ref(value: Any, field: str) -> str:
    """A group given by name or by gid."""
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return str(id_number(value, field))
    return user_name(value, field)


def comment_text(value: Any) -> str:
    text = _text(value, "comment", MAX_COMMENT)
    if ":" in text or _CONTROL.search(text):
        raise ApiError("400", "'comment' must not contain ':' or control characters (it is a field of /etc/passwd)")
    return text


def home_path(value: Any) -> str:
    """An absolute, normalised path without '..' (what a home directory may be)."""
    text = _text(value, "home_dir", MAX_HOME)
    if not text.startswith("/") or ":" in text or _CONTROL.search(text):
        raise ApiError("400", f"'home_dir' must be an absolute path without ':' or control characters, got {text[:80]!r}")
    if ".." in text.split("/") or posixpath.normpath(text) != text.rstrip("/") or "//" in text:
        raise ApiError("400", f"'home_dir' {text[:80]!r} must be a normalised path (no '..', '.' or '//')")
    return text.rstrip("/") or "/"


def shell_path(value: Any, shells_file: str) -> str:
    """A login shell listed in /etc/shells, or one of the standard no-login shells."""
    text = _text(value, "shell", 256)
    allowed = set(read_shells(shells_file)) | {s for s in NO_LOGIN_SHELLS if os.path.exists(s)}
    if text not in allowed:
        raise ApiError("400", f"'shell' {text[:80]!r} is not a login shell of this host: one of {', '.join(sorted(allowed))}")
    return text


def read_shells(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.strip() for line in f if line.strip().startswith("/")]
    except OSError:
        return []


def expire_date(value: Any) -> str:
    """``expire``: "" or "0" (never), seconds since the epoch, or YYYY-MM-DD → the
    ``useradd -e`` form (YYYY-MM-DD, or "" for never)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = _text(value, "expire", 32)
    if text in ("", "0"):
        return ""
    try:
        if text.isdigit():
            return datetime.datetime.fromtimestamp(int(text), datetime.timezone.utc).strftime("%Y-%m-%d")
        return datetime.date.fromisoformat(text).isoformat()
    except (ValueError, OverflowError, OSError):  # OSError: EOVERFLOW from the C library for huge times
        raise ApiError("400", f"'expire' {text!r} must be \"0\" (never), seconds since the epoch or a date YYYY-MM-DD") from None


def password_input(name: str, value: Any) -> bytes:
    """The ``chpasswd`` stdin line setting *name*'s password (never an argv)."""
    text = _text(value, "password", MAX_PASSWORD)
    if not text or "\n" in text or "\r" in text or "\x00" in text:
        raise ApiError("400", f"'password' must be 1-{MAX_PASSWORD} characters without line breaks or NUL")
    return f"{name}:{text}\n".encode("utf-8")


def unsupported(args: Dict[str, Any]) -> None:
    """Upstream fields this host cannot honour: 400 naming them rather than ignoring them."""
    for key in args:
        if isinstance(key, str) and key.startswith("personacrypt"):
            raise ApiError("400", f"'{key}': PersonaCrypt is a TrueOS feature that Linux does not have")
    if args.get("class") not in (None, ""):
        raise ApiError("400", "'class': login classes are a BSD feature; Linux accounts have none")
    if args.get("change") not in (None, "", "0", 0):
        raise ApiError("400", "'change' (a date the password must be changed by) is not supported here; "
                              "use 'expire' for the account's expiry date")


# --- argv ------------------------------------------------------------------------------------

def account_options(args: Dict[str, Any], shells_file: str) -> List[str]:
    """The options ``useradd`` and ``usermod`` share, from upstream's argument names."""
    argv: List[str] = []
    if args.get("uid") not in (None, ""):
        argv += ["-u", str(id_number(args["uid"], "uid"))]
    if "comment" in args:
        argv += ["-c", comment_text(args["comment"])]
    if args.get("home_dir") not in (None, ""):
        argv += ["-d", home_path(args["home_dir"])]
    if "expire" in args:
        argv += ["-e", expire_date(args["expire"])]
    if args.get("shell") not in (None, ""):
        argv += ["-s", shell_path(args["shell"], shells_file)]
    if args.get("group") not in (None, ""):
        argv += ["-g", group_ref(args["group"], "group")]
    if "other_groups" in args:
        argv += ["-G", ",".join(name_list(args["other_groups"], "other_groups"))]
    return argv


@dataclass
class Account:
    name: str
    uid: int
    gid: int
    comment: str
    home: str
    shell: str


@dataclass
class Group:
    name: str
    gid: int
    members: List[str]


class AccountDatabase:
    """``passwd``, ``group`` and ``shadow`` under *prefix* (``""``: the system's own),
    parsed once per change of the files."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix.rstrip("/")
        self.etc = (self.prefix or "") + "/etc"
        self._cache: Dict[str, Tuple[Tuple[int, int], Any]] = {}

    def path(self, name: str) -> str:
        return f"{self.etc}/{name}"

    @property
    def shells_file(self) -> str:
        return self.path("shells")

    def tool_prefix(self) -> List[str]:
        """``--prefix DIR`` for the shadow tools when this is not the system's database."""
        return ["--prefix", self.prefix] if self.prefix else []

    def _rows(self, name: str, width: int) -> List[List[str]]:
        path = self.path(name)
        try:
            st = os.stat(path)
        except OSError:
            return []
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        rows = []
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    fields = line.rstrip("\n").split(":")
                    if len(fields) >= width and fields[0] and not fields[0].startswith(("#", "+", "-")):
                        rows.append(fields)
        except OSError:
            return []
        self._cache[name] = (stamp, rows)
        return rows

    def accounts(self) -> List[Account]:
        out = []
        for f in self._rows("passwd", 7):
            try:
                out.append(Account(f[0], int(f[2]), int(f[3]), f[4], f[5], f[6]))
            except ValueError:
                continue
        return out

    def account(self, name: str) -> Optional[Account]:
        for a in self.accounts():
            if a.name == name:
                return a
        return None

    def groups(self) -> List[Group]:
        out = []
        for f in self._rows("group", 4):
            try:
                out.append(Group(f[0], int(f[2]), [m for m in f[3].split(",") if m]))
            except ValueError:
                continue
        return out

    def group(self, name: str) -> Optional[Group]:
        for g in self.groups():
            if g.name == name:
                return g
        return None

    def ageing(self) -> Dict[str, Tuple[str, str]]:
        """``{name: (change, expire)}`` as upstream's ``pw`` shows them: seconds since the
        epoch as strings, "0" for none (password must change by; account expires on)."""
        out = {}
        for f in self._rows("shadow", 8):
            change = expire = "0"
            if f[2].isdigit() and f[4].isdigit() and int(f[4]) < 99999:
                change = str((int(f[2]) + int(f[4])) * 86400)
            if f[7].isdigit():
                expire = str(int(f[7]) * 86400)
            out[f[0]] = (change, expire)
        return out

    def user_entry(self, account: Account, ageing: Dict[str, Tuple[str, str]]) -> Dict[str, str]:
        change, expire = ageing.get(account.name, ("0", "0"))
        return {"name": account.name, "uid": str(account.uid), "gid": str(account.gid), "class": "",
                "change": change, "expire": expire, "comment": account.comment, "home_dir": account.home,
                "shell": account.shell}


SYSTEM_DIRS = frozenset(("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc", "/root",
                         "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/nonexistent"))


def removable_home(db: AccountDatabase, account: Account) -> Tuple[bool, str]:
    """Whether ``userdel -r`` may remove *account*'s home: ``(exists, refusal)``.

    Refused (so the caller can say ``"clean_home":"false"``) when the directory is a
    system directory, a symlink, owned by another uid, or shared with another account.
    """
    home = account.home
    try:
        st = os.lstat(home)
    except OSError:
        return False, ""
    if home.rstrip("/") in SYSTEM_DIRS or home.count("/") < 2:
        return True, f"its home {home} is a system directory"
    if not os.path.isdir(home) or os.path.islink(home):
        return True, f"its home {home} is not a plain directory"
    if st.st_uid != account.uid:
        return True, f"its home {home} belongs to uid {st.st_uid}, not to the account"
    shared = [a.name for a in db.accounts() if a.home.rstrip("/") == home.rstrip("/") and a.name != account.name]
    if shared:
        return True, f"its home {home} is also the home of {', '.join(shared[:5])}"
    return True, ""


def members_after(current: Sequence[str], remove: Sequence[str]) -> List[str]:
    return [m for m in current if m not in set(remove)]
