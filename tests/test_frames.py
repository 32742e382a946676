"""bridge.frames: the bridge's RFC 6455 codec, pure (no sockets).

Interop with real autobahn clients, our bridge link and the CLI is proven by the bridge
suites (test_bridge_wss, test_bridge_e2e, test_bridgelink_*, test_client_bridge).
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from sysadmd.wire import frames
from sysadmd.wire.frames import BINARY, CLOSE, CONTINUATION, PING, PONG, TEXT, FrameError, FrameReader, encode_frame

KEY = b"\x01\x80\xfe\x37"


def client_frame(opcode: int, payload: bytes, fin: bool = True, key: bytes = KEY) -> bytes:
    return encode_frame(opcode, payload, fin=fin, mask=key)


def read_all(reader: FrameReader, data: bytes, chunk_sizes: Optional[List[int]] = None) -> List[Tuple[int, bytes]]:
    out = []
    pos = 0
    sizes = list(chunk_sizes or [len(data) or 1])
    while pos < len(data):
        size = sizes.pop(0) if sizes else len(data)
        reader.feed(data[pos:pos + size])
        pos += size
        while True:
            frame = reader.pop()
            if frame is None:
                break
            out.append(frame)
    return out


def fragments(opcode: int, payload: bytes, cuts: List[int], key: bytes = KEY) -> bytes:
    """*payload* as one message cut at *cuts* into a first frame and continuations."""
    points = sorted({c % (len(payload) + 1) for c in cuts})
    bounds = [0, *points, len(payload)]
    pieces = [payload[a:b] for a, b in zip(bounds, bounds[1:])]
    wire = b""
    for i, piece in enumerate(pieces):
        wire += client_frame(opcode if i == 0 else CONTINUATION, piece, fin=i == len(pieces) - 1, key=key)
    return wire


def fragments_unmasked(opcode: int, payload: bytes, cuts: List[int]) -> bytes:
    points = sorted({c % (len(payload) + 1) for c in cuts})
    bounds = [0, *points, len(payload)]
    pieces = [payload[a:b] for a, b in zip(bounds, bounds[1:])]
    return b"".join(encode_frame(opcode if i == 0 else CONTINUATION, piece, fin=i == len(pieces) - 1)
                    for i, piece in enumerate(pieces))


class CodecTests(unittest.TestCase):
    timeout = 60

    def test_unmask_matches_the_bytewise_definition(self):
        for nvx in (frames._vector_masker(), False):  # with autobahn's C masker and without it
            self.patch(frames, "_nvx_masker", nvx)
            for n in (0, 1, 3, 4, 5, 125, 2047, 2048, 2049, 70000):
                payload = os.urandom(n)
                expected = bytes(b ^ KEY[i % 4] for i, b in enumerate(payload))
                self.assertEqual(frames.unmask(payload, KEY), expected, (nvx, n))

    def test_server_frames_use_the_shortest_length_form(self):
        self.assertEqual(encode_frame(TEXT, b"hi"), b"\x81\x02hi")
        self.assertEqual(encode_frame(TEXT, b"x" * 126)[:4], b"\x81\x7e\x00\x7e")
        self.assertEqual(encode_frame(TEXT, b"x" * 65536)[:10], b"\x81\x7f" + (65536).to_bytes(8, "big"))
        self.assertEqual(encode_frame(BINARY, b"", fin=False), b"\x02\x00")

    def test_masked_text_frame_is_read(self):
        reader = FrameReader(1000)
        self.assertEqual(read_all(reader, client_frame(TEXT, b"::{id}\nhello")), [(TEXT, b"::{id}\nhello")])

    def test_rfc_example_frame(self):
        # RFC 6455 §5.7: a single-frame masked text message "Hello".
        reader = FrameReader(1000)
        wire = bytes.fromhex("818537fa213d7f9f4d5158")
        self.assertEqual(read_all(reader, wire), [(TEXT, b"Hello")])

    def test_control_frames_between_fragments(self):
        wire = (client_frame(TEXT, b"ab", fin=False) + client_frame(PING, b"p1")
                + client_frame(CONTINUATION, b"cd", fin=False) + client_frame(PONG, b"")
                + client_frame(CONTINUATION, b"ef") + client_frame(CLOSE, frames.close_payload(1000, b"bye")))
        got = read_all(FrameReader(1000), wire)
        self.assertEqual(got, [(PING, b"p1"), (PONG, b""), (TEXT, b"abcdef"), (CLOSE, b"\x03\xe8bye")])
        self.assertEqual(frames.parse_close(got[-1][1]), (1000, b"bye"))
        self.assertEqual(frames.parse_close(b""), (None, None))
        self.assertEqual(frames.parse_close(b"\x03\xe9"), (1001, None))

    def test_long_lengths(self):
        big = os.urandom(70000)
        mid = os.urandom(300)
        got = read_all(FrameReader(100000), client_frame(BINARY, big) + client_frame(TEXT, mid), [1, 1, 5, 3, 50000])
        self.assertEqual(got, [(BINARY, big), (TEXT, mid)])

    def assertProtocolError(self, wire: bytes, words: str) -> None:
        reader = FrameReader(1000)
        reader.feed(wire)
        with self.assertRaises(FrameError) as caught:
            while reader.pop() is not None:
                pass
        self.assertEqual(caught.exception.code, 1002)
        self.assertIn(words, caught.exception.reason)
        # After a protocol error the stream is not trusted: nothing more comes out.
        reader.feed(client_frame(TEXT, b"later"))
        self.assertIsNone(reader.pop())

    def test_protocol_errors(self):
        self.assertProtocolError(encode_frame(TEXT, b"x"), "unmasked")
        self.assertProtocolError(b"\xc1\x80" + KEY, "reserved bits")
        self.assertProtocolError(client_frame(3, b""), "unknown opcode 3")
        self.assertProtocolError(client_frame(0xB, b""), "unknown opcode 11")
        self.assertProtocolError(client_frame(PING, b"x" * 126), "control frame of 126 bytes")
        self.assertProtocolError(client_frame(PING, b"x", fin=False), "fragmented control frame")
        self.assertProtocolError(client_frame(CONTINUATION, b"x"), "continuation frame outside a message")
        self.assertProtocolError(client_frame(TEXT, b"a", fin=False) + client_frame(TEXT, b"b"), "new message before")
        self.assertProtocolError(client_frame(CLOSE, b"\x03"), "1-byte payload")
        self.assertProtocolError(b"\x82\xff\x80" + bytes(7) + KEY, "top bit")

    def test_oversized_message_is_dropped_and_control_frames_still_come(self):
        reader = FrameReader(10)
        wire = (client_frame(TEXT, b"12345", fin=False) + client_frame(CONTINUATION, b"678901", fin=False)
                + client_frame(PING, b"p") + client_frame(CONTINUATION, b"x" * 5000)
                + client_frame(TEXT, b"later") + client_frame(CLOSE, frames.close_payload(1009)))
        reader.feed(wire[:20])
        with self.assertRaises(FrameError) as caught:
            while reader.pop() is not None:
                pass
        self.assertEqual(caught.exception.code, 1009)
        self.assertIn("at most 10", caught.exception.reason)
        got = read_all(reader, wire[20:], [7, 3, 1000])
        self.assertEqual(got, [(PING, b"p"), (CLOSE, b"\x03\xf1")])

    def test_a_message_of_exactly_the_limit_passes(self):
        got = read_all(FrameReader(6), fragments(TEXT, b"abcdef", [2, 4]))
        self.assertEqual(got, [(TEXT, b"abcdef")])


class CodecProperties(unittest.TestCase):
    timeout = 120

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from([TEXT, BINARY]), st.binary(max_size=600),
                              st.lists(st.integers(min_value=0, max_value=600), max_size=4),
                              st.binary(min_size=4, max_size=4)), max_size=6),
           st.lists(st.integers(min_value=1, max_value=700), max_size=30),
           st.lists(st.binary(max_size=125), max_size=3))
    def test_round_trip_any_fragmentation_any_chunking(self, messages, chunks, pings):
        wire = b""
        for i, (opcode, payload, cuts, key) in enumerate(messages):
            wire += fragments(opcode, payload, cuts, key)
            if i < len(pings):
                wire += client_frame(PING, pings[i], key=key)
        expected = []
        for i, (opcode, payload, _, _) in enumerate(messages):
            expected.append((opcode, payload))
            if i < len(pings):
                expected.append((PING, pings[i]))
        self.assertEqual(read_all(FrameReader(600), wire, chunks), expected)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from([TEXT, BINARY]), st.binary(max_size=600),
                              st.lists(st.integers(min_value=0, max_value=600), max_size=4)), max_size=6),
           st.lists(st.integers(min_value=1, max_value=700), max_size=30),
           st.integers(min_value=10, max_value=10 ** 6))
    def test_unmasked_server_frames_round_trip(self, messages, chunks, stream_from):
        # What a client (our bridge link) reads: the same framing without masking keys,
        # whole or streamed piece by piece.
        self.patch(frames, "_STREAM_FROM", stream_from)
        wire = b"".join(fragments_unmasked(opcode, payload, cuts) for opcode, payload, cuts in messages)
        expected = [(opcode, payload) for opcode, payload, _ in messages]
        self.assertEqual(read_all(FrameReader(600, masked=False), wire, chunks), expected)

    def test_each_side_refuses_the_other_sides_framing(self):
        with self.assertRaises(FrameError):
            read_all(FrameReader(100, masked=False), client_frame(TEXT, b"masked"))
        with self.assertRaises(FrameError):
            read_all(FrameReader(100), encode_frame(TEXT, b"unmasked"))

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.binary(max_size=400), st.lists(st.integers(min_value=0, max_value=400), max_size=3)),
                    max_size=4),
           st.lists(st.integers(min_value=1, max_value=300), max_size=40))
    def test_streamed_frames_round_trip(self, messages, chunks):
        # Large frames are unmasked piece by piece; a low threshold puts most frames there.
        self.patch(frames, "_STREAM_FROM", 20)
        wire = b"".join(fragments(BINARY, payload, cuts) + client_frame(PONG, b"x") for payload, cuts in messages)
        got = read_all(FrameReader(400), wire, chunks)
        # a pong sent after a message's last fragment comes after the message
        self.assertEqual(got, [f for payload, _ in messages for f in ((BINARY, payload), (PONG, b"x"))])

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400), st.lists(st.integers(min_value=1, max_value=50), max_size=20))
    def test_garbage_raises_only_frame_errors(self, garbage, chunks):
        self.patch(frames, "_STREAM_FROM", 20)  # streamed and buffered frames alike
        reader = FrameReader(200)
        pos = 0
        errors = 0
        while pos < len(garbage) and errors < 3:
            size = chunks.pop(0) if chunks else len(garbage)
            reader.feed(garbage[pos:pos + size])
            pos += size
            while True:
                try:
                    frame = reader.pop()
                except FrameError as e:
                    self.assertIn(e.code, (1002, 1009))
                    errors += 1
                    continue
                if frame is None:
                    break
                self.assertIn(frame[0], (TEXT, BINARY, CLOSE, PING, PONG))

    @given(st.binary(max_size=70000), st.sampled_from([TEXT, BINARY]))
    @settings(max_examples=30, deadline=None)
    def test_server_frames_parse_back_when_masked(self, payload, opcode):
        # Our encoder and reader agree on every length form.
        wire = encode_frame(opcode, payload, mask=KEY)
        self.assertEqual(read_all(FrameReader(1 << 20), wire), [(opcode, payload)])
        self.assertEqual(encode_frame(opcode, payload)[len(frames.frame_header(opcode, len(payload))):], payload)


def take_one_whole_frame(reader: FrameReader) -> Optional[Tuple[int, bytes]]:
    """What a caller of front/skip does (the bridge's relay): parse one whole, unfragmented
    masked data frame at the front itself, else leave everything to pop."""
    front = reader.front()
    if front is None:
        return None
    buf, start, end = front
    if end - start < 2 or buf[start] not in (0x81, 0x82) or not buf[start + 1] & 0x80:
        return None
    length = buf[start + 1] & 0x7F
    head = 6
    if length == 126:
        if end - start < 4:
            return None
        length = int.from_bytes(buf[start + 2:start + 4], "big")
        head = 8
    elif length == 127:
        return None
    if end - start < head + length:
        return None
    key = buf[start + head - 4:start + head]
    payload = frames.unmask(buf[start + head:start + head + length], key)
    reader.skip(head + length)
    return buf[start] & 0x0F, payload


class FrontAndSkipProperties(unittest.TestCase):
    timeout = 120

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from([TEXT, BINARY]), st.binary(max_size=400),
                              st.lists(st.integers(min_value=0, max_value=400), max_size=3)), max_size=8),
           st.lists(st.integers(min_value=1, max_value=500), max_size=30),
           st.lists(st.booleans(), min_size=1, max_size=40))
    def test_a_caller_taking_whole_frames_itself_loses_and_repeats_nothing(self, messages, chunks, takes):
        wire = b"".join(fragments(opcode, payload, cuts) for opcode, payload, cuts in messages)
        reader = FrameReader(400)
        got = []
        pos = 0
        sizes = list(chunks) or [len(wire) or 1]
        turn = 0
        while pos < len(wire):
            size = sizes[turn % len(sizes)]
            reader.feed(wire[pos:pos + size])
            pos += size
            while True:
                take = takes[turn % len(takes)]
                turn += 1
                frame = take_one_whole_frame(reader) if take else None
                if frame is None:
                    frame = reader.pop()
                if frame is None:
                    break
                got.append(frame)
        self.assertEqual(got, [(opcode, payload) for opcode, payload, _ in messages])

    def test_no_front_while_a_message_is_in_fragments_or_being_dropped(self):
        reader = FrameReader(10)
        reader.feed(client_frame(TEXT, b"abc", fin=False) + client_frame(CONTINUATION, b"d", fin=False))
        self.assertIsNone(reader.pop())
        self.assertIsNone(reader.front())  # the message's second part is still to come
        reader.feed(client_frame(CONTINUATION, b"e"))
        self.assertEqual(reader.pop(), (TEXT, b"abcde"))
        self.assertIsNone(reader.front())  # nothing buffered
        reader.feed(client_frame(TEXT, b"x" * 11))
        with self.assertRaises(FrameError):
            reader.pop()
        reader.feed(client_frame(TEXT, b"y"))
        self.assertIsNone(reader.front())  # dropping after the oversized message
