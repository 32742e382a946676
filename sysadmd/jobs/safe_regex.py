"""Regular expressions matched in time linear in the subject, for the ``~`` filter.

Python's :mod:`re` backtracks: ``(a+)+b`` against thirty ``a`` takes minutes, and a
match cannot be interrupted.  The ``~`` operator reads patterns from clients, so it
uses this small engine instead: the pattern is parsed into a Thompson NFA and the
subject is read once, left to right, keeping the set of NFA states alive (the sets
met are cached as DFA states).  No backtracking, so the cost of one match is at most
``len(subject) × nfa_states`` steps whatever the pattern.

Semantics follow ``re.match(pattern, subject)`` (anchored at the start, not at the
end) for the accepted syntax:

* literals; ``.`` (anything but a newline); ``\\d \\D \\w \\W \\s \\S`` (Unicode, as ``re``);
  ``\\n \\t \\r \\f \\v``; any escaped punctuation (``\\.``, ``\\[``…);
* classes ``[abc]``, ``[^a-z0-9_]``, with the escapes above inside;
* groups ``(…)`` and ``(?:…)`` (nothing is captured); alternation ``|``;
* quantifiers ``* + ? {m} {m,} {,n} {m,n}`` (and their lazy ``?`` forms, which match
  the same strings); a bounded repeat may expand the pattern to at most
  :data:`MAX_NFA_STATES` states;
* ``^`` matches at the start only; ``$`` at the end of the subject only (``re``'s ``$``
  also matches before a final newline; ours is ``\\Z``).

Refused with a :class:`RegexError` naming the position: backreferences, lookarounds,
inline flags and other ``(?…)`` groups, ``\\b \\B \\A \\Z``, nested sets, unknown
escapes, patterns longer than :data:`MAX_PATTERN_CHARS` characters.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, FrozenSet, List, Optional, Tuple

MAX_PATTERN_CHARS = 256
MAX_NFA_STATES = 1024
MAX_CACHED_TRANSITIONS = 4096  # per pattern; the cache is emptied when it is full


class RegexError(ValueError):
    """The pattern is not accepted; the message says where and why."""


Pred = Callable[[str], bool]


def _is_word(c: str) -> bool:
    return c.isalnum() or c == "_"


_CLASS_ESCAPES: Dict[str, Pred] = {
    "d": str.isdecimal,
    "D": lambda c: not c.isdecimal(),
    "w": _is_word,
    "W": lambda c: not _is_word(c),
    "s": str.isspace,
    "S": lambda c: not c.isspace(),
}
_CHAR_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}
_QUANT = re.compile(r"\{(\d*)(,?)(\d*)\}")

# AST: ("char", pred) ("cat", [..]) ("alt", [..]) ("rep", node, min, max|None) ("bol",) ("eol",)


class _Parser:
    def __init__(self, pattern: str):
        self.p = pattern
        self.i = 0

    def error(self, what: str, at: Optional[int] = None) -> RegexError:
        return RegexError(f"{what} at position {self.i if at is None else at}")

    def peek(self) -> str:
        return self.p[self.i] if self.i < len(self.p) else ""

    def parse(self) -> tuple:
        node = self.alternation()
        if self.i < len(self.p):
            raise self.error("unbalanced ')'")
        return node

    def alternation(self) -> tuple:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.sequence())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def sequence(self) -> tuple:
        items: List[tuple] = []
        while self.i < len(self.p) and self.peek() not in "|)":
            start = self.i
            atom = self.atom()
            q = self.quantifier()
            if q is not None:
                if atom[0] in ("bol", "eol"):
                    raise self.error("an anchor (^ or $) cannot be repeated", start)
                atom = ("rep", atom, q[0], q[1])
            items.append(atom)
        return items[0] if len(items) == 1 else ("cat", items)

    def quantifier(self) -> Optional[Tuple[int, Optional[int]]]:
        c = self.peek()
        if c in ("*", "+", "?"):
            self.i += 1
            q = {"*": (0, None), "+": (1, None), "?": (0, 1)}[c]
        elif c == "{" and self._quant_at(self.i) is not None:
            q, self.i = self._quant_at(self.i)
        else:
            return None
        if self.peek() == "?":
            self.i += 1  # lazy: the same strings match
        if self.peek() in ("*", "+", "?") or (self.peek() == "{" and self._quant_at(self.i) is not None):
            raise self.error("multiple repeat (a quantifier on a quantifier)")
        return q

    def _quant_at(self, i: int):
        m = _QUANT.match(self.p, i)
        if m is None or (not m.group(1) and not m.group(2)):
            return None
        low = int(m.group(1)) if m.group(1) else 0
        if m.group(2):
            high = int(m.group(3)) if m.group(3) else None
        else:
            high = low
        if high is not None and high < low:
            raise self.error("min repeat greater than max repeat", i)
        if low > MAX_NFA_STATES or (high is not None and high > MAX_NFA_STATES):
            raise self.error(f"repeat count over {MAX_NFA_STATES}", i)
        return (low, high), m.end()

    def atom(self) -> tuple:
        c = self.p[self.i]
        if c in "*+?" or (c == "{" and self._quant_at(self.i) is not None):
            raise self.error("nothing to repeat")
        self.i += 1
        if c == "(":
            if self.peek() == "?":
                if self.p.startswith("?:", self.i):
                    self.i += 2
                else:
                    raise self.error("(?...) groups (lookarounds, named groups, flags) are not supported", self.i - 1)
            inner = self.alternation()
            if self.peek() != ")":
                raise self.error("missing ')'")
            self.i += 1
            return inner
        if c == "[":
            return ("char", self.char_class())
        if c == ".":
            return ("char", lambda ch: ch != "\n")
        if c == "^":
            return ("bol",)
        if c == "$":
            return ("eol",)
        if c == "\\":
            pred, _ = self.escape(in_class=False)
            return ("char", pred)
        return ("char", c.__eq__)

    def escape(self, in_class: bool) -> Tuple[Pred, Optional[str]]:
        """After a backslash: (predicate, the literal character or None for a class)."""
        if self.i >= len(self.p):
            raise self.error("bad escape (end of pattern)")
        c = self.p[self.i]
        self.i += 1
        if c in _CLASS_ESCAPES:
            return _CLASS_ESCAPES[c], None
        if c in _CHAR_ESCAPES:
            ch = _CHAR_ESCAPES[c]
            return ch.__eq__, ch
        if c.isascii() and c.isalnum():
            what = "backreferences are" if c.isdigit() else f"\\{c} is"
            raise self.error(f"{what} not supported", self.i - 2)
        return c.__eq__, c

    def char_class(self) -> Pred:
        start = self.i - 1
        negate = False
        if self.peek() == "^":
            negate = True
            self.i += 1
        parts: List[Pred] = []
        ranges: List[Tuple[str, str]] = []
        first = True
        while True:
            if self.i >= len(self.p):
                raise self.error("unterminated character set", start)
            c = self.p[self.i]
            if c == "]" and not first:
                self.i += 1
                break
            first = False
            if c == "[":
                raise self.error("'[' inside a set is not supported (write \\[)")
            self.i += 1
            if c == "\\":
                pred, lit = self.escape(in_class=True)
            else:
                pred, lit = c.__eq__, c
            if self.peek() == "-" and self.i + 1 < len(self.p) and self.p[self.i + 1] != "]":
                if lit is None:
                    raise self.error("a class escape cannot start a range")
                self.i += 1
                hc = self.p[self.i]
                self.i += 1
                if hc == "\\":
                    _, hi = self.escape(in_class=True)
                    if hi is None:
                        raise self.error("a class escape cannot end a range")
                elif hc == "[":
                    raise self.error("'[' inside a set is not supported (write \\[)")
                else:
                    hi = hc
                if hi < lit:
                    raise self.error("bad character range")
                ranges.append((lit, hi))
            else:
                parts.append(pred)

        def pred(ch: str) -> bool:
            hit = any(lo <= ch <= hi for lo, hi in ranges) or any(p(ch) for p in parts)
            return hit != negate

        return pred


# Program: list of instructions ("char", pred, next) ("split", a, b) ("jmp", a) ("bol", next)
# ("eol", next) ("match",)


class _Compiler:
    def __init__(self) -> None:
        self.prog: List[list] = []

    def emit(self, *ins) -> int:
        if len(self.prog) >= MAX_NFA_STATES:
            raise RegexError(f"the pattern expands to more than {MAX_NFA_STATES} states (shorten its repeats)")
        self.prog.append(list(ins))
        return len(self.prog) - 1

    def here(self) -> int:
        return len(self.prog)

    def node(self, n: tuple) -> None:
        kind = n[0]
        if kind == "char":
            self.emit("char", n[1], self.here() + 1)
        elif kind in ("bol", "eol"):
            self.emit(kind, self.here() + 1)
        elif kind == "cat":
            for item in n[1]:
                self.node(item)
        elif kind == "alt":
            jumps = []
            branches = n[1]
            for k, branch in enumerate(branches):
                if k < len(branches) - 1:
                    split = self.emit("split", self.here() + 1, None)
                    self.node(branch)
                    jumps.append(self.emit("jmp", None))
                    self.prog[split][2] = self.here()
                else:
                    self.node(branch)
            for j in jumps:
                self.prog[j][1] = self.here()
        elif kind == "rep":
            _, inner, low, high = n
            for _ in range(low):
                self.node(inner)
            if high is None:
                loop = self.emit("split", self.here() + 1, None)
                self.node(inner)
                self.emit("jmp", loop)
                self.prog[loop][2] = self.here()
            else:
                splits = []
                for _ in range(high - low):
                    splits.append(self.emit("split", self.here() + 1, None))
                    self.node(inner)
                for s in splits:
                    self.prog[s][2] = self.here()
        else:  # pragma: no cover - the parser makes no other node
            raise AssertionError(kind)


class SafeRegex:
    """A compiled pattern; :meth:`match` is ``re.match(...) is not None`` in linear time."""

    def __init__(self, pattern: str):
        if not isinstance(pattern, str):
            raise RegexError("the pattern must be a string")
        if len(pattern) > MAX_PATTERN_CHARS:
            raise RegexError(f"the pattern is {len(pattern)} characters long; at most {MAX_PATTERN_CHARS} are accepted")
        self.pattern = pattern
        compiler = _Compiler()
        compiler.node(_Parser(pattern).parse())
        compiler.emit("match")
        self.prog = compiler.prog
        self._cache: Dict[Tuple[FrozenSet[int], str], FrozenSet[int]] = {}
        self._start = self._closure([0], at_start=True)
        self._match_pc = len(self.prog) - 1

    def _closure(self, pcs, at_start: bool, at_end: bool = False) -> FrozenSet[int]:
        """The char/eol/match instructions reachable from *pcs* without reading.  ``eol``
        is passed only *at_end*; ``bol`` only *at_start*."""
        out = set()
        seen = set()
        stack = list(pcs)
        prog = self.prog
        while stack:
            pc = stack.pop()
            if pc in seen:
                continue
            seen.add(pc)
            ins = prog[pc]
            op = ins[0]
            if op == "split":
                stack.append(ins[2])
                stack.append(ins[1])
            elif op == "jmp":
                stack.append(ins[1])
            elif op == "bol":
                if at_start:
                    stack.append(ins[1])
            elif op == "eol":
                if at_end:
                    stack.append(ins[1])
                else:
                    out.add(pc)
            else:
                out.add(pc)
        return frozenset(out)

    def _accepts_at_end(self, states: FrozenSet[int], at_start: bool) -> bool:
        eols = [self.prog[pc][1] for pc in states if self.prog[pc][0] == "eol"]
        return bool(eols) and self._match_pc in self._closure(eols, at_start=at_start, at_end=True)

    def match(self, subject: str) -> bool:
        states = self._start
        match_pc = self._match_pc
        if match_pc in states:
            return True
        cache = self._cache
        prog = self.prog
        for c in subject:
            key = (states, c)
            nxt = cache.get(key)
            if nxt is None:
                targets = [prog[pc][2] for pc in states if prog[pc][0] == "char" and prog[pc][1](c)]
                nxt = self._closure(targets, at_start=False)
                if len(cache) >= MAX_CACHED_TRANSITIONS:
                    cache.clear()
                cache[key] = nxt
            states = nxt
            if not states:
                return False
            if match_pc in states:
                return True
        return self._accepts_at_end(states, at_start=not subject)
