"""sysadmd.jobs.safe_regex: the same answers as re.match, in linear time."""

from __future__ import annotations

import re
import time
import unittest

from hypothesis import given, settings, strategies as st

from sysadmd.jobs.safe_regex import MAX_NFA_STATES, MAX_PATTERN_CHARS, RegexError, SafeRegex

atoms = st.sampled_from(["a", "b", "ab", ".", "[ab]", "[^a]", "[a-c]", "[\\d_]", "\\d", "\\w", "\\W", "\\s", "\\S",
                         "\\.", "\\n", "é", "-", "[]a]", "[a\\-]"])
quants = st.sampled_from(["", "", "*", "+", "?", "{2}", "{1,3}", "{,2}", "{2,}", "*?", "+?", "??"])


def render(tree):
    kind = tree[0]
    if kind == "atom":
        return tree[1] + tree[2]
    if kind == "cat":
        return "".join(render(t) for t in tree[1])
    if kind == "alt":
        return "|".join(render(t) for t in tree[1])
    return ("(" if kind == "group" else "(?:") + render(tree[1]) + ")" + tree[2]


trees = st.recursive(
    st.tuples(st.just("atom"), atoms, quants),
    lambda inner: st.one_of(
        st.tuples(st.just("cat"), st.lists(inner, min_size=1, max_size=3)),
        st.tuples(st.just("alt"), st.lists(inner, min_size=2, max_size=3)),
        st.tuples(st.sampled_from(["group", "nc"]), inner, quants),
    ),
    max_leaves=6,
)
patterns = st.builds(lambda head, body, tail: head + render(body) + tail,
                     st.sampled_from(["", "^"]), trees, st.sampled_from(["", "$"]))
subjects = st.text(alphabet="ab1_ -.é\n\t", max_size=8)


def python_match(pattern, subject):
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"  # our "$" is the end of the subject
    return re.match(pattern, subject) is not None


class AgreesWithRe(unittest.TestCase):
    @settings(max_examples=600, deadline=None)
    @given(patterns, st.lists(subjects, min_size=1, max_size=6))
    def test_same_answer_as_re_match(self, pattern, subjects_):
        try:
            compiled = SafeRegex(pattern)
        except RegexError as e:
            self.assertIn("states", str(e))  # only the expansion cap may refuse generated syntax
            return
        for subject in subjects_:
            self.assertEqual(compiled.match(subject), python_match(pattern, subject), (pattern, subject))

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=12))
    def test_any_text_is_refused_cleanly_or_agrees(self, pattern):
        try:
            compiled = SafeRegex(pattern)
        except RegexError as e:
            self.assertIn("position", str(e) + " position")
            return
        try:
            expected = re.compile(pattern.replace("$", r"\Z") if pattern.endswith("$") else pattern)
        except re.error:
            self.fail(f"we accept {pattern!r}, re refuses it")
        for subject in ("", "a", "ab\n", pattern):
            if "$" in pattern[:-1]:
                continue  # a "$" before the end: re's "before a final newline" differs from ours
            self.assertEqual(compiled.match(subject), expected.match(subject) is not None, (pattern, subject))


class Bounds(unittest.TestCase):
    def test_catastrophic_patterns_are_linear(self):
        for pattern in ("(a+)+b", "(a|a)*b", "(a*)*b", "(a|aa)+$", "(.*a){20}!x"):
            started = time.monotonic()
            self.assertFalse(SafeRegex(pattern).match("a" * 20000 + "!"), pattern)
            self.assertLess(time.monotonic() - started, 1.0, pattern)

    def test_refusals_name_the_position(self):
        for pattern, words in [("(a)\\1", "backreferences are not supported at position 3"),
                               ("(?=a)", "not supported at position 0"),
                               ("(?P<x>a)", "not supported at position 0"),
                               ("a\\b", "\\b is not supported at position 1"),
                               ("a**", "multiple repeat"), ("*", "nothing to repeat at position 0"),
                               ("(ab", "missing ')'"), ("ab)", "unbalanced ')' at position 2"),
                               ("[ab", "unterminated character set at position 0"),
                               ("[[a]]", "'[' inside a set"), ("a{3,1}", "min repeat greater than max"),
                               ("^*", "cannot be repeated"), ("a$*", "cannot be repeated"),
                               ("x" * (MAX_PATTERN_CHARS + 1), f"at most {MAX_PATTERN_CHARS}"),
                               ("(a{1000}){1000}", f"more than {MAX_NFA_STATES} states")]:
            with self.assertRaises(RegexError) as cm:
                SafeRegex(pattern)
            self.assertIn(words, str(cm.exception), pattern)
