"""Every WebSocket close code sysadmd, sysadm-bridge and the client send (RFC 6455 §7.4.1).

Defined here and nowhere else: the daemon, the bridge, the outgoing bridge links and the
client import these names instead of writing the numbers.  The reason sent with a code is
one short sentence, cut to 123 bytes (``close_with`` in :mod:`sysadmd.wire.wsbase`).

On autobahn's public data path (the fallback of :mod:`sysadmd.wire.wsbase`, used when its
hooked internals are missing) ``sendClose`` refuses codes other than 1000 and 3000-4999,
so 1001, 1008, 1011 and 1013 go out as ``4000 + code % 1000`` (4001, 4008, 4011, 4013),
reason unchanged.  1006 (connection dropped without a close frame) is never sent; peers
see it when a connection is cut.
"""

CLOSE_NORMAL = 1000  # the conversation is over: the client is done, a bridge link was removed
CLOSE_GOING_AWAY = 1001  # the daemon shuts down, a session sat idle too long, a bridged client left
CLOSE_PROTOCOL_ERROR = 1002  # a frame broke RFC 6455 (bad opcode, reserved bits, bad close payload...)
CLOSE_POLICY = 1008  # refused by policy: not logged in in time, address blocked, key revoked, limits
CLOSE_TOO_BIG = 1009  # a message over the size or fragment limit
CLOSE_INTERNAL = 1011  # an unexpected error of ours while handling the connection's message
CLOSE_TRY_AGAIN = 1013  # too busy (MAX_CONNECTIONS reached): come back later
CLOSE_ABNORMAL = 1006  # reported locally when no close frame came; never sent on the wire

ALL = (CLOSE_NORMAL, CLOSE_GOING_AWAY, CLOSE_PROTOCOL_ERROR, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_INTERNAL,
       CLOSE_TRY_AGAIN, CLOSE_ABNORMAL)
