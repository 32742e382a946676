"""Closing a WebSocket with any RFC 6455 code.

autobahn's public ``sendClose`` accepts only 1000 and 3000-4999, but our protocols
close with 1008 (policy: blocked, too slow, not authenticated), 1009 (too big),
1011 and 1013 (busy), as the wire protocol promises.  The reason is cut to the 123
bytes a close frame can carry without splitting a UTF-8 character; autobahn drops the
connection if the peer does not answer within its closeHandshakeTimeout.
"""

from __future__ import annotations

from typing import Any


def close_with_code(protocol: Any, code: int, reason: str) -> None:
    if protocol.state != protocol.STATE_OPEN:
        return
    data = reason.encode("utf-8")[:123]
    while data:
        try:
            data.decode("utf-8")
            break
        except UnicodeDecodeError:
            data = data[:-1]
    protocol.sendCloseFrame(code=code, reasonUtf8=data, isReply=False)
