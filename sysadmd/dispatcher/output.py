"""A command's output as events and replies show it: capped, decoded, streamed in pieces.

The whole output of every command goes to the job's file (:mod:`.store`).  What travels
in events and replies is at most ``JOB_OUTPUT_CAP`` bytes per command: the *tail*, since
the end of a log is what says why a command failed, after a note saying how much was
cut.  Bytes are decoded as UTF-8 with replacement characters, never split inside a
character.
"""

from __future__ import annotations

CUT_NOTE = "[… {cut} bytes cut; full output in the job log]\n"
# When the job's file could not keep everything either (JOB_OUTPUT_FILE_MAX / _TOTAL_MAX).
CUT_NOTE_LOST = "[… {cut} bytes cut; {lost} of them are not in the job log either]\n"


def _skip_continuation(data: bytes) -> int:
    """Where the first whole character starts (a cut may land inside one)."""
    start = 0
    while start < min(3, len(data)) and 0x80 <= data[start] <= 0xBF:
        start += 1
    return start


def _whole_prefix(data: bytes) -> int:
    """Length of *data* without a trailing, still incomplete UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)
        if byte >= 0xC0:  # lead byte: how long is its sequence?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) - back if need > back else len(data)
    return len(data)


def render(tail: bytes, total: int, cap: int, lost: int = 0) -> str:
    """Text of an output whose last bytes are *tail* out of *total*, at most *cap* bytes.

    *lost* of the bytes before *tail* are not in the job's file either (the note says so)."""
    if len(tail) > cap:
        tail = tail[-cap:]
    cut = total - len(tail)
    if cut <= 0:
        return tail.decode("utf-8", "replace")
    skip = _skip_continuation(tail)
    note = CUT_NOTE_LOST.format(cut=cut + skip, lost=min(lost, cut)) if lost > 0 else CUT_NOTE.format(cut=cut + skip)
    return note + tail[skip:].decode("utf-8", "replace")


class CommandOutput:
    """Bounded memory of one running command's output: its tail and its unsent part."""

    def __init__(self, cap: int):
        self.cap = cap
        self.total = 0
        self._tail = bytearray()
        self._unsent = bytearray()
        self._unsent_total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        self._unsent_total += len(data)
        for buf in (self._tail, self._unsent):
            buf += data
            # Trim lazily (at twice the cap) so a stream of small chunks is not quadratic.
            if len(buf) > 2 * self.cap:
                del buf[: len(buf) - self.cap]

    @property
    def has_unsent(self) -> bool:
        return self._unsent_total > 0

    def take_unsent(self) -> str:
        """The output since the last call (capped); an incomplete character waits."""
        data = bytes(self._unsent)
        keep = _whole_prefix(data)
        held = data[keep:]
        total = self._unsent_total - len(held)
        self._unsent = bytearray(held)
        self._unsent_total = len(held)
        body = data[:keep]
        return render(body, total, self.cap)

    def tail_bytes(self) -> bytes:
        """The last (at most *cap*) bytes of the output so far."""
        return bytes(self._tail[-self.cap:])

    def text(self) -> str:
        """The whole output so far, capped to its tail."""
        return render(bytes(self._tail), self.total, self.cap)
