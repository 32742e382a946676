"""Command splitting (Qt's QProcess rules) and output capping: pure functions."""

from hypothesis import given, settings, strategies as st
from twisted.trial import unittest

from sysadmd.dispatcher.commands import CommandError, split_command
from sysadmd.dispatcher.output import CommandOutput, render


class SplitCommandTests(unittest.TestCase):
    def test_whitespace_separates(self):
        self.assertEqual(split_command("ls  -l\t/tmp\n"), ["ls", "-l", "/tmp"])

    def test_double_quotes_group(self):
        self.assertEqual(split_command('echo "hello world" x'), ["echo", "hello world", "x"])
        self.assertEqual(split_command('a"b c"d'), ["ab cd"])

    def test_three_quotes_are_a_literal_quote(self):
        self.assertEqual(split_command('echo """'), ["echo", '"'])
        self.assertEqual(split_command('echo "say """hi""" now"'), ["echo", 'say "hi" now'])

    def test_two_quotes_add_nothing(self):
        self.assertEqual(split_command('echo "" x'), ["echo", "x"])
        self.assertEqual(split_command('a""b'), ["ab"])

    def test_upstream_pkg_example(self):
        self.assertEqual(split_command('pkg install -y --repository "pcbsd-major"misc/pcbsd-meta-mate'),
                         ["pkg", "install", "-y", "--repository", "pcbsd-majormisc/pcbsd-meta-mate"])

    def test_shell_syntax_is_plain_text(self):
        self.assertEqual(split_command("echo $HOME && rm -rf / | cat > x; `id`"),
                         ["echo", "$HOME", "&&", "rm", "-rf", "/", "|", "cat", ">", "x;", "`id`"])

    def test_unterminated_quote_keeps_the_rest(self):
        self.assertEqual(split_command('echo "a b'), ["echo", "a b"])

    def test_empty_is_an_error(self):
        for text in ("", "   ", '""', '  ""  "" '):
            with self.assertRaises(CommandError):
                split_command(text)

    def test_nul_is_an_error(self):
        with self.assertRaises(CommandError):
            split_command("echo a\0b")

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.sampled_from(['"', " ", "\t", "a", "b", "é", "\0", "\n"]), max_size=40) | st.text(max_size=40))
    def test_never_raises_anything_but_command_error(self, text):
        try:
            args = split_command(text)
        except CommandError:
            self.assertTrue("\0" in text or not text.replace('"', "").strip())
            return
        self.assertTrue(args)
        for arg in args:
            self.assertIsInstance(arg, str)
            self.assertTrue(arg)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.text(alphabet=st.characters(blacklist_characters='"\0', blacklist_categories=("Cs",)), min_size=1, max_size=8), min_size=1, max_size=5))
    def test_quoting_round_trips(self, args):
        text = " ".join('"' + a + '"' for a in args)
        self.assertEqual(split_command(text), args)


class OutputTests(unittest.TestCase):
    def test_short_output_is_whole(self):
        self.assertEqual(render(b"abc\n", 4, 1024), "abc\n")

    def test_long_output_keeps_the_tail_and_says_so(self):
        text = render(b"x" * 3000 + b"END", 3003, 1024)
        self.assertTrue(text.startswith("[… 1979 bytes cut; full output in the job log]\n"))
        self.assertTrue(text.endswith("xEND"))
        self.assertEqual(len(text.split("\n", 1)[1]), 1024)

    def test_cut_inside_a_character_skips_it(self):
        data = "é".encode() * 1000  # 2000 bytes
        text = render(data[-1025:], 2000, 1025)
        self.assertNotIn("\ufffd", text)
        self.assertTrue(text.endswith("é"))

    def test_unsent_parts_and_split_characters(self):
        out = CommandOutput(1024)
        out.feed(b"hello \xc3")
        self.assertEqual(out.take_unsent(), "hello ")
        out.feed(b"\xa9!")
        self.assertEqual(out.take_unsent(), "é!")
        self.assertFalse(out.has_unsent)
        self.assertEqual(out.text(), "hello é!")

    def test_memory_stays_bounded(self):
        out = CommandOutput(1024)
        for _ in range(1000):
            out.feed(b"y" * 100)
        self.assertLessEqual(len(out._tail), 2048)
        self.assertEqual(out.total, 100000)
        self.assertIn("98976 bytes cut", out.text())
