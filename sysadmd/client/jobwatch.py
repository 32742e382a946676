"""Turn one job's ``dispatcher`` events into live terminal output and an exit code.

The events (seed 001 shape, sysadmd's cadence)::

    {"state":"pending","cmd_list":[…],"process_id":ID}
    {"state":"running","current_cmd":C,"cmd_list":[…],"process_id":ID,"time_started":…,
     "<done cmd>":"<its whole log>","return_codes/<done cmd>":"0", C:"<output since the last update>"}
    {"state":"finished","time_finished":…,"<cmd>":"<whole log>","return_codes/<cmd>":"<code>",…}

So the current command's value is *new* text, and a finished command's value is its
*whole* log (possibly only its tail, after a ``[… N bytes cut …]`` note).  The follower
counts the bytes shown per command and prints only what was not shown yet, which also
covers the last piece of a command's output that arrives with its end.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional, Tuple

CUT = re.compile(r"^\[… (\d+) bytes cut[^\]\n]*\]\n")

Output = Tuple[str, str]  # ("out" | "err", text)


def exit_status(code: Any) -> int:
    """A return code as a process exit status: -1 (could not start, killed) and junk → 255."""
    try:
        value = int(str(code).strip())
    except ValueError:
        return 255
    return value if 0 <= value <= 255 else 255


class JobFollower:
    def __init__(self, job_id: str, commands: Optional[List[str]] = None):
        self.job_id = job_id
        self.commands = list(commands or [])
        self.shown: Dict[str, int] = {}  # command -> bytes of its output shown so far
        self.announced: set = set()
        self.state = "submitted"
        self.done = False
        self.exit_code: Optional[int] = None
        self.kill_requested = False

    def concerns(self, args: Any) -> bool:
        if not isinstance(args, dict):
            return False
        if args.get("process_id") == self.job_id:
            return True
        details = args.get("process_details")
        return isinstance(details, dict) and details.get("process_id") == self.job_id

    def feed(self, args: Any) -> List[Output]:
        """Outputs for one dispatcher event (nothing if it is about another job)."""
        if self.done or not self.concerns(args):
            return []
        if "process_id" not in args:
            args = args["process_details"]
        cmd_list = args.get("cmd_list")
        if isinstance(cmd_list, list) and all(isinstance(c, str) for c in cmd_list):
            self.commands = cmd_list
        state = args.get("state")
        self.state = state if isinstance(state, str) else self.state
        out: List[Output] = []
        current = args.get("current_cmd") if state == "running" else None
        for cmd in self.commands:
            if cmd == current:
                break
            if f"return_codes/{cmd}" in args and isinstance(args.get(cmd), str):
                out += self._whole_log(cmd, args[cmd])
        if isinstance(current, str):
            if current not in self.announced:
                self.announced.add(current)
                if len(self.commands) > 1:
                    done = sum(1 for c in self.commands if f"return_codes/{c}" in args)
                    out.append(("err", f"[{done + 1}/{len(self.commands)}] {current}\n"))
            if isinstance(args.get(current), str):
                out += self._new_text(current, args[current])
        if state == "finished":
            out += self._finish(args)
        return out

    # --- output accounting ------------------------------------------------------------
    def _new_text(self, cmd: str, text: str) -> List[Output]:
        if not text:
            return []
        match = CUT.match(text)
        body = text[match.end():] if match else text
        cut = int(match.group(1)) if match else 0
        self.shown[cmd] = self.shown.get(cmd, 0) + cut + len(body.encode("utf-8"))
        return [("out", text)]

    def _whole_log(self, cmd: str, log: str) -> List[Output]:
        match = CUT.match(log)
        cut = int(match.group(1)) if match else 0
        body = (log[match.end():] if match else log).encode("utf-8")
        shown = self.shown.get(cmd, 0)
        self.shown[cmd] = max(shown, cut + len(body))
        if shown >= cut + len(body):
            return []
        if shown == 0 and match:
            return [("out", log)]
        if shown < cut:
            return [("out", f"[… {cut - shown} bytes not shown; full output in the job log]\n"), ("out", body.decode("utf-8", "replace"))]
        return [("out", body[shown - cut:].decode("utf-8", "replace"))]

    def _finish(self, args: Dict[str, Any]) -> List[Output]:
        """The job's result: its first non-zero return code (a chain stops there), else 0.

        Servers differ on the commands a failure skipped (upstream gives them no keys,
        some give them ``-1``), so the first failure decides, not the last key.
        """
        self.done = True
        ran = [c for c in self.commands if f"return_codes/{c}" in args]
        out: List[Output] = []
        if not ran:
            self.exit_code = 0 if not self.commands else 255
            if self.commands:
                why = "it was killed before it started" if self.kill_requested else "no command ran"
                out.append(("err", f"job {self.job_id}: {why}\n"))
            return out
        failed = next((c for c in ran if str(args[f"return_codes/{c}"]).strip() != "0"), None)
        if failed is None:
            self.exit_code = 0
            return out
        raw = str(args[f"return_codes/{failed}"]).strip()
        self.exit_code = exit_status(raw)
        skipped = len(self.commands) - self.commands.index(failed) - 1
        if raw == "-1":
            why = "was killed" if self.kill_requested else "could not start or was killed"
            out.append(("err", f"job {self.job_id}: `{failed}` {why} (return code -1)\n"))
        elif skipped:
            out.append(("err", f"job {self.job_id}: stopped after `{failed}` exited with {raw}; "
                               f"{skipped} command(s) not run\n"))
        return out
