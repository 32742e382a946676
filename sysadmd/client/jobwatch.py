"""Turn one job's ``dispatcher`` events into its exact output and an exit code.

The events (upstream's shape, sysadmd's cadence; docs/protocol.md §7)::

    {"state":"pending","cmd_list":[…],"process_id":ID}
    {"state":"running","current_cmd":C,"cmd_list":[…],"process_id":ID,"time_started":…,
     "<done cmd>":"<its whole log>","return_codes/<done cmd>":"0", C:"<output since the last update>"}
    {"state":"finished","time_finished":…,"<cmd>":"<whole log>","return_codes/<cmd>":"<code>",…}

So the current command's value is *new* text, and a finished command's value is its
*whole* log.  Both may start with a ``[… N bytes cut …]`` note: the text then holds only
the last bytes, N bytes after where the previous text ended.  Each text is therefore a
*segment* of the command's output at a known byte position (as long as the output is
valid UTF-8).

The follower keeps, per command, how many bytes of its output went to stdout.  A segment
that continues there is printed at once (what was printed already is skipped); one that
starts further on leaves a hole, which is filled from the job's stored output
(``{"action":"read_output"}``, see :mod:`sysadmd.dispatcher.rpc`) before the segment is
printed.  Text with U+FFFD (invalid UTF-8, or a real U+FFFD) does not say how many bytes
it stood for, so from then on that command's output is read from the server only.
Bytes the server did not keep are noted on stderr with their count; stdout never gets a
note.  A server without ``read_output`` (upstream, older sysadmd) gets the same notes
for what its events left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple

CUT = re.compile(r"^\[… (\d+) bytes cut[^\]\n]*\]\n")
REPLACEMENT = "\ufffd"
READ_LENGTH = 256 * 1024  # bytes asked for per read_output request (the server's maximum)

Output = Tuple[str, str]  # ("out" | "err", text)
Emit = Callable[[str, str], None]  # (stream, text)
Fetch = Callable[[int, int, int], Awaitable[Any]]  # (command index, offset, length) -> read_output reply


class FetchUnavailable(Exception):
    """The server would not send stored output (no such action, no rights, job gone…)."""


def exit_status(code: Any) -> int:
    """A return code as a process exit status: -1 (could not start, killed) and junk → 255."""
    try:
        value = int(str(code).strip())
    except ValueError:
        return 255
    return value if 0 <= value <= 255 else 255


@dataclass
class Segment:
    """Bytes [start, start + len(body)) of command *index*'s output, as an event carried them."""

    index: int
    start: int
    body: bytes
    text: str  # *body* as the event had it
    whole: bool  # from a whole log: the command has ended


@dataclass
class CommandState:
    printed: int = 0  # bytes of its output written to stdout (its position in the output)
    seen: int = 0  # where the events' texts got to
    fuzzy: bool = False  # a text held U+FFFD: positions from events are not reliable


def missing_note(count: int, command: str) -> str:
    return f"[sysadm: {count} bytes of the output of `{command}` are missing here: the server did not keep them]\n"


def hidden_note(count: int, command: str) -> str:
    return f"[sysadm: {count} bytes of the output of `{command}` not shown here: the server cannot send them]\n"


class JobFollower:
    def __init__(self, job_id: str, commands: Optional[List[str]] = None):
        self.job_id = job_id
        self.commands = list(commands or [])
        self.states: Dict[int, CommandState] = {}
        self.announced: set = set()
        self.state = "submitted"
        self.done = False
        self.exit_code: Optional[int] = None
        self.kill_requested = False
        self.can_fetch = True  # until the server refuses read_output once

    def concerns(self, args: Any) -> bool:
        if not isinstance(args, dict):
            return False
        if args.get("process_id") == self.job_id:
            return True
        details = args.get("process_details")
        return isinstance(details, dict) and details.get("process_id") == self.job_id

    def printed(self, command: str) -> int:
        """Bytes of *command*'s output written to stdout so far."""
        return self.states.get(self._index(command), CommandState()).printed

    def feed(self, args: Any) -> List[Any]:
        """What one dispatcher event means, in order: ``("out"|"err", text)`` to write, and
        ``("fetch", Segment)`` for a segment that needs :meth:`resolve` (nothing for other jobs)."""
        if self.done or not self.concerns(args):
            return []
        if "process_id" not in args:
            args = args["process_details"]
        cmd_list = args.get("cmd_list")
        if isinstance(cmd_list, list) and all(isinstance(c, str) for c in cmd_list):
            self.commands = cmd_list
        state = args.get("state")
        self.state = state if isinstance(state, str) else self.state
        out: List[Any] = []
        current = args.get("current_cmd") if state == "running" else None
        for cmd in self.commands:
            if cmd == current:
                break
            if f"return_codes/{cmd}" in args and isinstance(args.get(cmd), str):
                out += self._segment(cmd, args[cmd], whole=True)
        if isinstance(current, str) and current in self.commands:
            if current not in self.announced:
                self.announced.add(current)
                if len(self.commands) > 1:
                    done = sum(1 for c in self.commands if f"return_codes/{c}" in args)
                    out.append(("err", f"[{done + 1}/{len(self.commands)}] {current}\n"))
            if isinstance(args.get(current), str):
                out += self._segment(current, args[current], whole=False)
        if state == "finished":
            out += self._finish(args)
        return out

    # --- output accounting ------------------------------------------------------------
    def _index(self, command: str) -> int:
        return self.commands.index(command) if command in self.commands else -1

    def _segment(self, cmd: str, text: str, whole: bool) -> List[Any]:
        index = self._index(cmd)
        st = self.states.setdefault(index, CommandState())
        if not text and not whole:
            return []
        match = CUT.match(text)
        body = text[match.end():] if match else text
        cut = int(match.group(1)) if match else 0
        data = body.encode("utf-8")
        if REPLACEMENT in body:
            st.fuzzy = True
        # A delta follows the previous one; a whole log ends where the output ends.
        start = st.seen + cut if not whole else cut
        st.seen = max(st.seen, start + len(data)) if whole else start + len(data)
        segment = Segment(index, start, data, body, whole)
        if self.can_fetch and (st.fuzzy or start > st.printed):
            return [("fetch", segment)]
        return self._show(segment)

    def _show(self, seg: Segment) -> List[Output]:
        """The part of *seg* not printed yet; a hole before it is noted on stderr."""
        st = self.states[seg.index]
        command = self.commands[seg.index]
        end = seg.start + len(seg.body)
        if st.fuzzy and not self.can_fetch:  # positions are guesses: show the text as it came
            st.printed = max(st.printed, end)
            return [("out", seg.text)] if seg.text and not seg.whole else []
        if st.printed >= end:
            return []
        out: List[Output] = []
        if st.printed < seg.start:
            out.append(("err", hidden_note(seg.start - st.printed, command)))
            body = seg.body
        else:
            body = seg.body[st.printed - seg.start:]
        st.printed = end
        if body:
            out.append(("out", body.decode("utf-8", "replace")))
        return out

    async def resolve(self, seg: Segment, fetch: Fetch, emit: Emit) -> None:
        """Fill the hole before *seg* from the stored output, then print the rest of *seg*."""
        st = self.states[seg.index]
        if self.can_fetch:
            try:
                if st.fuzzy:
                    await self._read(seg.index, None, seg.whole, fetch, emit)
                    return
                await self._read(seg.index, seg.start, False, fetch, emit)
            except FetchUnavailable as e:
                self.can_fetch = False
                emit("err", f"sysadm: cannot read job {self.job_id}'s stored output ({e}); "
                            f"what the events left out is only counted\n")
        for stream, text in self._show(seg):
            emit(stream, text)

    async def _read(self, index: int, until: Optional[int], final: bool, fetch: Fetch, emit: Emit) -> None:
        """Print stored output from where stdout is to *until* (None: as far as there is,
        and with *final* to the command's end)."""
        st = self.states[index]
        command = self.commands[index]
        while until is None or st.printed < until:
            length = READ_LENGTH if until is None else min(READ_LENGTH, until - st.printed)
            reply = await fetch(index, st.printed, length)
            missing, data, next_offset, size, finished = _reply_fields(reply)
            if next_offset <= st.printed:
                return  # nothing more for now
            if missing:
                emit("err", missing_note(missing, command))
            if data:
                emit("out", data)
            st.printed = next_offset
            if until is None and next_offset >= size and (finished or not final):
                return

    def finish(self, args: Dict[str, Any]) -> List[Output]:
        """Take the exit code from the job's finished process log *args*; notes for stderr."""
        if self.done:
            return []
        cmd_list = args.get("cmd_list")
        if isinstance(cmd_list, list) and all(isinstance(c, str) for c in cmd_list):
            self.commands = cmd_list
        return self._finish(args)

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


def _reply_fields(reply: Any) -> Tuple[int, str, int, int, bool]:
    """(missing, data, next_offset, size, finished) of a read_output reply, checked."""
    if not isinstance(reply, dict):
        raise FetchUnavailable(f"unexpected reply {reply!r:.80}")
    try:
        missing, data, next_offset = reply["missing"], reply["data"], reply["next_offset"]
        size, finished = reply["size"], reply["finished"]
    except KeyError as e:
        raise FetchUnavailable(f"the reply has no {e.args[0]!r}") from None
    if not (all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (missing, next_offset, size))
            and isinstance(data, str) and isinstance(finished, bool)):
        raise FetchUnavailable(f"unexpected reply {reply!r:.80}")
    return missing, data, next_offset, size, finished


class StoredOutputReader:
    """A job's output from its first byte, read from the server's stored output alone.

    ``sysadm job attach`` starts after the job did, so the events it sees carry neither
    the beginning nor positions it can trust; it reads every command's output with
    ``read_output`` in order instead, and uses the job's events only as a signal that
    there may be more (:meth:`nudge`).  Without an event it looks again every
    :attr:`poll` seconds (events may be dropped for a slow reader; a half character
    waits for the rest).  Bytes the server did not keep are counted on stderr.
    """

    def __init__(self, job_id: str, commands: List[str], fetch: Fetch, emit: Emit,
                 sleep: Callable[[float, "Any"], Awaitable[Any]], poll: float = 2.0):
        self.job_id = job_id
        self.commands = list(commands)
        self.fetch = fetch
        self.emit = emit
        self.sleep = sleep  # (seconds, wake Deferred-like) -> awaitable that ends at either
        self.poll = poll
        self.nudges = 0  # events seen for the job (a counter, so none is lost between a read and a wait)
        self.job_state = "pending"
        self._wake: Any = None

    def nudge(self) -> None:
        """Something happened to the job (one of its events arrived)."""
        self.nudges += 1
        wake, self._wake = self._wake, None
        if wake is not None and not wake.called:
            wake.callback(None)

    async def _wait(self, mark: int) -> None:
        if self.nudges != mark:
            return
        from twisted.internet import defer

        self._wake = defer.Deferred()
        await self.sleep(self.poll, self._wake)

    async def read_all(self) -> None:
        """Print every command's output in order, returning once the last one has ended
        and the job is finished."""
        if not self.commands:
            return
        for index, command in enumerate(self.commands):
            offset = 0
            announced = False
            while True:
                mark = self.nudges
                reply = await self.fetch(index, offset, READ_LENGTH)
                missing, data, next_offset, size, finished = _reply_fields(reply)
                state = reply.get("job_state")
                self.job_state = state if isinstance(state, str) else self.job_state
                if (data or missing) and not announced and len(self.commands) > 1:
                    announced = True
                    self.emit("err", f"[{index + 1}/{len(self.commands)}] {command}\n")
                if missing:
                    self.emit("err", missing_note(missing, command))
                if data:
                    self.emit("out", data)
                progressed = next_offset > offset
                offset = max(offset, next_offset)
                if finished and offset >= size:
                    break
                if not progressed:
                    await self._wait(mark)
        while self.job_state != "finished":  # the last command ended; the job ends right after
            mark = self.nudges
            reply = await self.fetch(len(self.commands) - 1, 0, 1)
            state = reply.get("job_state") if isinstance(reply, dict) else None
            if not isinstance(state, str):
                raise FetchUnavailable(f"unexpected reply {reply!r:.80}")
            self.job_state = state
            if state != "finished":
                await self._wait(mark)
