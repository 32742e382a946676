"""What can go wrong in ``sysadm``, said in words, with the exit code for each case.

Expected failures (no daemon, wrong password, a changed certificate, an error reply)
become a :class:`ClientError` whose message is printed as is; only real bugs produce a
traceback.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from twisted.internet import defer, error
from twisted.python.failure import Failure

# Exit codes (also listed in ``sysadm --help``).
EXIT_OK = 0
EXIT_ERROR_REPLY = 1  # the server answered with an error (or a job failed: see `run`)
EXIT_USAGE = 2  # bad command line or input (argparse uses 2 as well)
EXIT_CERTIFICATE = 3  # the server's certificate does not match the pinned one
EXIT_CONNECT = 4  # cannot connect, timed out, or the connection was lost
EXIT_AUTH = 5  # login refused
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_TERMINATED = 143  # SIGTERM

EXIT_CODES_HELP = """\
exit codes:
  0    success
  1    the server answered with an error reply
  2    bad usage or input (unknown option, invalid JSON, unreadable key file)
  3    the server's certificate differs from the pinned one (see known-hosts)
  4    cannot connect, timed out, or the connection was lost
  5    login refused (wrong password, unknown key or token)
  130  interrupted (Ctrl-C; `run` without a terminal detaches and leaves the job running)
  141  the reader of the output went away (`sysadm … | head`), as other Unix tools do
  143  terminated (SIGTERM)
  run: the job's last return code (255 when a command could not start or was killed)
"""


class ClientError(Exception):
    """An expected failure: *message* is shown to the user, *exit_code* ends the program."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR_REPLY):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class ErrorReply(ClientError):
    """The server answered a request with an error envelope."""

    def __init__(self, envelope: Dict[str, Any], what: str = ""):
        self.envelope = envelope
        self.code, self.text, self.detail = error_fields(envelope)
        super().__init__(describe_error_reply(envelope, what), EXIT_ERROR_REPLY)


def error_fields(envelope: Dict[str, Any]) -> tuple:
    """``(code, message, detail)`` of an error envelope, tolerant of odd shapes."""
    args = envelope.get("args")
    if isinstance(args, dict):
        return (str(args.get("code", "?")), str(args.get("message", "")), str(args.get("detail", "") or ""))
    # The upstream bridge answers a failed auth_ssl with {"args":"unauthorized",…}.
    return ("?", str(args), "")


def is_error(envelope: Dict[str, Any]) -> bool:
    return envelope.get("name") == "error" or envelope.get("namespace") == "error"


HINTS = {
    "401": "log in with --user NAME (password from SYSADM_PASSWORD or the terminal), --key FILE or --token TOKEN",
    "403": "this needs full access: log in as root or a member of a full-access group (FULL_ACCESS_GROUPS)",
    "404": "`sysadm query` lists the APIs this server offers",
}


def describe_error_reply(envelope: Dict[str, Any], what: str = "") -> str:
    code, message, detail = error_fields(envelope)
    head = f"{what}: " if what else ""
    text = f"{head}error {code} {message}".rstrip()
    if detail:
        text += f": {detail}"
    hint = HINTS.get(code)
    if hint:
        text += f"\n  hint: {hint}"
    return text


def describe_connect_failure(target: str, failure: Failure, *, service: str = "sysadmd") -> ClientError:
    """A :class:`ClientError` saying why *target* could not be reached."""
    value = failure.value
    if isinstance(value, ClientError):
        return value
    if failure.check(error.ConnectionRefusedError):
        why = "connection refused"
    elif failure.check(error.DNSLookupError):
        return ClientError(f"cannot connect to {target}: host name not found", EXIT_CONNECT)
    elif failure.check(error.TimeoutError, defer.TimeoutError, defer.CancelledError):
        return ClientError(f"cannot connect to {target}: timed out", EXIT_CONNECT)
    elif failure.check(error.NoRouteError):
        why = "no route to host"
    elif failure.check(FileNotFoundError) or "No such file" in str(value):
        why = "no such socket"
    elif failure.check(PermissionError) or "Permission denied" in str(value):
        return ClientError(
            f"cannot connect to {target}: permission denied\n"
            "  hint: the local socket belongs to the daemon's user; use sudo, or --url with --user/--key",
            EXIT_CONNECT,
        )
    else:
        detail = _short(value)
        if "ssl" in type(value).__module__.lower() or "SSL" in type(value).__name__:
            return ClientError(f"cannot connect to {target}: TLS handshake failed ({detail})", EXIT_CONNECT)
        return ClientError(f"cannot connect to {target}: {detail}", EXIT_CONNECT)
    return ClientError(f"cannot connect to {target}: {why}; is {service} running?", EXIT_CONNECT)


def connection_lost(target: str, reason: Optional[str] = None) -> ClientError:
    suffix = f" ({reason})" if reason else ""
    return ClientError(f"connection to {target} lost{suffix}", EXIT_CONNECT)


def _short(value: Any) -> str:
    text = str(value).strip() or type(value).__name__
    return text.splitlines()[0][:200]
