"""The "!" frame codec of sysadmd.wire.e2e.Session on its fast path (binascii directly, issue 13
benchmark): the same wire as the base64 module's encoding, and every malformed base64 text
refused the way ``base64.b64decode(validate=True)`` refuses it, without using up a counter."""

from __future__ import annotations

import base64
import binascii
import os
import unittest
from unittest import mock

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from sysadmd.wire import e2e


def pair():
    a, b = os.urandom(32), os.urandom(32)
    return e2e.Session(a, b), e2e.Session(b, a)


class FrameCodecTests(unittest.TestCase):
    def test_frames_are_standard_base64_of_the_aead_output(self):
        send_key, receive_key = os.urandom(32), os.urandom(32)
        client = e2e.Session(send_key, receive_key)
        for counter, size in enumerate((0, 1, 2, 3, 47, 48, 49, 757, 70000)):
            plaintext = os.urandom(size)
            frame = client.seal(plaintext)
            self.assertTrue(frame.startswith("!"))
            self.assertNotIn("\n", frame)
            expected = ChaCha20Poly1305(send_key).encrypt(counter.to_bytes(12, "big"), plaintext, None)
            self.assertEqual(base64.b64decode(frame[1:], validate=True), expected)
            self.assertEqual(frame[1:], base64.b64encode(expected).decode("ascii"))

    def test_malformed_base64_is_refused_like_validate_true_and_keeps_the_counter(self):
        client, server = pair()
        good = client.seal(b'{"id":"1"}')
        body = good[1:]
        variants = {
            "trailing newline": body + "\n",
            "inner space": body[:8] + " " + body[8:],
            "missing padding": body.rstrip("="),
            "data after padding": body + body,
            "non-alphabet": body[:4] + "*" + body[5:],
            "url-safe alphabet": body.replace("+", "-").replace("/", "_") if ("+" in body or "/" in body) else body[:4] + "-" + body[5:],
            "non-ASCII": body[:4] + "\u00e9" + body[5:],
            "NUL": body[:4] + "\x00" + body[5:],
        }
        for what, text in variants.items():
            with self.subTest(what):
                with self.assertRaises((binascii.Error, ValueError), msg="the base64 module accepts it"):
                    base64.b64decode(text, validate=True)
                with self.assertRaisesRegex(e2e.E2EError, "not base64"):
                    server.open("!" + text)
        self.assertEqual(server.received, 0)
        self.assertEqual(server.open(good), b'{"id":"1"}')  # the refusals used up nothing
        self.assertEqual(server.received, 1)

    def test_plain_and_oversized_frames_are_refused_before_decoding(self):
        _, server = pair()
        for text in ('{"id":"1"}', "", None, b"!AAAA"):
            with self.subTest(repr(text)):
                with self.assertRaisesRegex(e2e.E2EError, "plain frame"):
                    server.open(text)
        with mock.patch.object(e2e, "MAX_FRAME_CHARS", 64):
            with self.assertRaisesRegex(e2e.E2EError, "over 64 characters"):
                server.open("!" + "A" * 64)
        self.assertEqual(server.received, 0)

    def test_empty_and_short_bodies_do_not_open(self):
        _, server = pair()
        for text in ("!", "!AAAA", "!" + base64.b64encode(bytes(15)).decode()):
            with self.subTest(text):
                with self.assertRaisesRegex(e2e.E2EError, "does not open"):
                    server.open(text)
        self.assertEqual(server.received, 0)


if __name__ == "__main__":
    unittest.main()
