"""Math answer grading: find the final answer in a completion, compare it with a reference.

Comparison, cheapest first: two plain numbers compare exactly as decimals ("1,000" == "1000",
"18.0" == "18", "$18" == "18"); equal normal forms of the text are equal; anything else is
judged by the `math-verify` library (sympy-based equivalence of LaTeX or plain expressions).

Why worker processes: math-verify can be made to run for very long by a hostile answer
(`9^{9^{9^{9}}}`, deeply nested brackets), and its own timeouts use SIGALRM, which works only
in the main thread of the main interpreter. A grader called from a server thread or a thread
pool cannot use them. So math-verify runs in worker processes (`python -m
ttscale.tasks.grading`) that read JSON lines on stdin and answer on stdout. Inside a worker,
math-verify's own timeouts (whole seconds) stop most slow parses and comparisons and the
worker lives on; the parent also holds a hard deadline per comparison and kills and replaces a
worker that misses it (loops in C that a signal cannot interrupt, a crash, memory exhaustion).
A comparison that times out is graded wrong. Workers start lazily.

Measured on 2 busy CPU cores: a worker starts in 0.5-2 s; the pipe adds about 0.5 ms to a
comparison (13.1 vs 12.5 ms for `x` vs `x.0+0`); all 500 MATH-500 gold answers verify in
2.3 s with one worker. With the default 5 s deadline math-verify's own timeouts are 1 s, and
`9^{9^{9^{9}}}`, `9!!!!`, 40 nested brackets or `10^{10^{10}}` are each graded wrong in about
1.0 s without losing the worker; with a 1 s deadline the worker is killed and replaced
(about 1.4 s in all, then 0.5-2 s to start the next one).
"""
from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal, InvalidOperation
from pathlib import Path
from queue import Queue
from typing import Any

MAX_ANSWER_CHARS = 1000  # longer "answers" are graded wrong without parsing them
DEFAULT_TIMEOUT_S = 5.0  # hard deadline per math-verify comparison, in the parent
WORKER_MEMORY_BYTES = 4 << 30  # address-space limit of a worker (POSIX only)
WORKER_START_TIMEOUT_S = 120.0  # starting a worker imports sympy; slow on a busy machine

_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOXED_BARE = re.compile(r"\\boxed[ \t]+([^\s${][^\s$]*)")
_ANSWER_IS = re.compile(r"\banswer\s*(?:is|:)[ \t]*:?[ \t]*([^\n]*)", re.IGNORECASE)
_A_LINE = re.compile(r"^A:([^\n]*)", re.MULTILINE)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[-+]?\.\d+")
# two plain words in a row (not LaTeX commands): a sentence, not an answer
_PROSE = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{2,}'?[a-z]*[ \t]+[A-Za-z]{2,}")
_WRAPPERS = (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"))


# -- extraction -----------------------------------------------------------------------------
def _balanced(text: str, open_at: int, end: int | None = None) -> str | None:
    """The text inside the braces opening at `open_at`, or None if they do not close before
    `end`."""
    depth = 0
    for k in range(open_at, len(text) if end is None else end):
        c = text[k]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1: k]
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last complete `\\boxed{...}` (or `\\fbox{...}`, `\\boxed 5`)."""
    end = None
    for m in reversed(list(_BOXED.finditer(text))):
        # A box that is still open where a later, unclosed box starts never closes: scanning
        # up to there keeps the search linear even for hostile text.
        inner = _balanced(text, m.end() - 1, end)
        if inner is not None:
            return inner
        end = m.start()
    bare = _BOXED_BARE.findall(text)
    return bare[-1] if bare else None


def clean_answer(answer: str | None) -> str | None:
    """Strip what surrounds an answer: spaces, `$...$`, `\\(...\\)`, bold, `\\boxed{}`, a final
    period. None when nothing is left."""
    if answer is None:
        return None
    s = answer.strip()
    if len(s) > MAX_ANSWER_CHARS:
        return s  # graded wrong anyway; not worth unwrapping
    changed = True
    while changed and s:
        changed = False
        s2 = s.rstrip(" .").strip() if s.endswith(".") and not s.endswith("..") else s
        for left, right in _WRAPPERS:
            if len(s2) > len(left) + len(right) and s2.startswith(left) and s2.endswith(right):
                s2 = s2[len(left): len(s2) - len(right)].strip()
        m = _BOXED.match(s2)
        if m and _balanced(s2, m.end() - 1) == s2[m.end(): -1]:
            s2 = s2[m.end(): -1].strip()
        changed, s = s2 != s, s2
    return s or None


def extract_final_answer(completion: str) -> str | None:
    """The final answer stated in a completion, or None.

    Looked for in this order, the last occurrence of each: a `#### N` line (GSM8K), a
    `\\boxed{...}` with balanced braces (MATH), an "answer is ..." / "answer: ..." line, an
    "A: ..." line (the built-in tasks' format). A stated "answer" that reads as prose ("Answer:
    Let's think step by step") is no answer.
    """
    found = [m for m in _HASHES.findall(completion) if m.strip()]
    if found:
        return clean_answer(found[-1])
    boxed = last_boxed(completion)
    if boxed is not None:
        return clean_answer(boxed)
    return _stated_answer(completion)


def extract_gsm8k_answer(completion: str) -> str | None:
    """GSM8K's way: the last `#### N` line, else a `\\boxed{}` (chat models), else the last
    number in the text; None when there is none."""
    found = [m for m in _HASHES.findall(completion) if m.strip()]
    if found:
        return clean_answer(found[-1])
    boxed = last_boxed(completion)
    if boxed is not None:
        return clean_answer(boxed)
    numbers = _NUMBER.findall(completion)
    return clean_answer(numbers[-1]) if numbers else None


def extract_math_answer(completion: str) -> str | None:
    """MATH's way: the last complete `\\boxed{...}`, else an "answer is X" that is math, not
    prose; None when there is none."""
    boxed = last_boxed(completion)
    if boxed is not None:
        return clean_answer(boxed)
    return _stated_answer(completion)


def _stated_answer(completion: str) -> str | None:
    """The last "answer is X" / "answer: X" / "A: X" whose X is not prose."""
    for pattern in (_ANSWER_IS, _A_LINE):
        said = [a for a in (clean_answer(m) for m in pattern.findall(completion))
                if a and not _PROSE.search(a)]
        if said:
            return said[-1]
    return None


# -- cheap comparisons ----------------------------------------------------------------------
def parse_number(text: str | None) -> Decimal | None:
    """A plain number ("1,000", "-3.50", "$18", "18.") as an exact decimal, else None."""
    if text is None:
        return None
    s = text.strip()
    for prefix in ("\\$", "$"):
        if s.startswith(prefix):
            s = s[len(prefix):].strip()
    if len(s) > 64 or not _NUMBER.fullmatch(s):
        return None
    try:
        return Decimal(s.replace(",", ""))
    except InvalidOperation:
        return None


def normal_form(answer: str) -> str:
    """A textual normal form of a math answer: no spaces, `\\left`, `\\right`, `\\!`, `\\,`;
    `\\dfrac`/`\\tfrac` as `\\frac`. Equal normal forms mean equal answers."""
    s = clean_answer(answer) or ""
    for old, new in (("\\left", ""), ("\\right", ""), ("\\!", ""), ("\\,", ""), ("\\;", ""),
                     ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\displaystyle", "")):
        s = s.replace(old, new)
    return re.sub(r"\s+", "", s)


def answer_key(answer: str | None) -> str | None:
    """A vote key: the canonical decimal of a plain number, else the normal form."""
    if answer is None:
        return None
    number = parse_number(clean_answer(answer))
    if number is not None:
        return _canonical(number)
    return normal_form(answer) or None


def _canonical(d: Decimal) -> str:
    s = format(d.normalize(), "f")
    return "0" if s in ("-0", "+0") else s


# -- math-verify in worker processes --------------------------------------------------------
class _Worker:
    """One math-verify worker process and its pipes; restarted when it dies or overruns."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.buf = b""

    def _start(self) -> None:
        # The worker imports this module; make sure it finds the same copy of ttscale.
        src = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (src, os.environ.get("PYTHONPATH")) if p)}
        # Its own session: a Ctrl-C meant for the parent does not kill it mid-answer.
        self.proc = subprocess.Popen([sys.executable, "-m", "ttscale.tasks.grading"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, bufsize=0, env=env,
                                     start_new_session=True)
        self.buf = b""
        line = self._readline(time.monotonic() + WORKER_START_TIMEOUT_S)
        if line != b"ready":
            self.stop()
            detail = (line or b"no answer").decode(errors="replace")
            raise RuntimeError(f"the math-verify worker did not start: {detail}")

    def _readline(self, deadline: float) -> bytes | None:
        """One line from the worker, or None at the deadline or when the worker died."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
        self.proc = None

    def equal(self, gold: str, answer: str, timeout_s: float) -> bool | None:
        """math-verify's verdict, or None when it missed the deadline (the worker is killed)."""
        if self.proc is None or self.proc.poll() is not None:
            self.stop()
            self._start()
        assert self.proc is not None and self.proc.stdin is not None
        inner = max(1, int(timeout_s / 3))  # math-verify's own timeouts, whole seconds
        try:
            self.proc.stdin.write(json.dumps([gold, answer, inner]).encode() + b"\n")
        except (BrokenPipeError, OSError):
            self.stop()
            return None
        line = self._readline(time.monotonic() + timeout_s)
        if line is None:
            self.stop()
            return None
        return line == b"1"


class MathGrader:
    """Thread-safe grading of math answers against references, with a deadline per comparison.

    `timeout_s` bounds one math-verify comparison (parsing both sides and comparing them);
    `workers` worker processes serve concurrent callers and `equal_many`.
    """

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, workers: int = 1,
                 cache_size: int = 4096):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s!r} must be positive")
        if workers < 1:
            raise ValueError(f"workers={workers!r} must be at least 1")
        self.timeout_s = timeout_s
        self.workers = workers
        self.timeouts = 0  # comparisons that missed the deadline so far
        self._all = [_Worker() for _ in range(workers)]
        self._idle: Queue[_Worker] = Queue()
        for w in self._all:
            self._idle.put(w)
        self._cache: dict[tuple[str, str], bool] = {}
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def equal(self, gold: str, answer: str | None) -> bool:
        """Whether `answer` means the same as the reference `gold`."""
        if answer is None or not answer.strip() or len(answer) > MAX_ANSWER_CHARS:
            return False
        g, a = parse_number(clean_answer(gold)), parse_number(clean_answer(answer))
        if g is not None and a is not None:
            return g == a
        if normal_form(answer) and normal_form(gold) == normal_form(answer):
            return True
        return self.verify(gold, answer)

    def verify(self, gold: str, answer: str) -> bool:
        """math-verify's verdict alone (no shortcuts), under the deadline; False on timeout."""
        if len(answer) > MAX_ANSWER_CHARS:
            return False
        key = (gold, answer)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        worker = self._idle.get()
        try:
            verdict = worker.equal(_for_latex(gold), _for_latex(answer), self.timeout_s)
        finally:
            self._idle.put(worker)
        with self._lock:
            if verdict is None:
                self.timeouts += 1
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = bool(verdict)
        return bool(verdict)

    def equal_many(self, pairs: Sequence[tuple[str, str | None]]) -> list[bool]:
        """`equal` for many (gold, answer) pairs, spread over the worker processes."""
        return self._many(self.equal, pairs)

    def verify_many(self, pairs: Sequence[tuple[str, str]]) -> list[bool]:
        """`verify` for many (gold, answer) pairs, spread over the worker processes."""
        return self._many(self.verify, pairs)

    def _many(self, fn: Callable[[str, Any], bool], pairs: Sequence[tuple[str, Any]]
              ) -> list[bool]:
        if self.workers == 1 or len(pairs) < 2:
            return [fn(g, a) for g, a in pairs]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(lambda p: fn(*p), pairs))

    def close(self) -> None:
        """Stop the worker processes (they are restarted if the grader is used again)."""
        for w in self._all:
            w.stop()

    def __enter__(self) -> "MathGrader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _for_latex(answer: str) -> str:
    """An answer wrapped in `$...$` so that math-verify reads it as LaTeX."""
    return "$" + (clean_answer(answer) or "") + "$"


def _worker_main() -> None:
    """Serve `[gold, answer, timeout_s]` lines with `1` (equal) or `0` lines."""
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # only the protocol goes to the real stdout
    try:
        import logging

        if sys.platform != "win32":
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
        logging.disable(logging.CRITICAL)  # math-verify logs every timeout as a warning
        from math_verify import parse, verify
    except Exception as e:  # reported to the parent, which raises it
        out.write(f"error {type(e).__name__}: {e}\n".encode())
        out.flush()
        return
    out.write(b"ready\n")
    out.flush()
    for line in sys.stdin.buffer:
        try:
            gold, answer, t = json.loads(line)
            ok = bool(verify(parse(gold, parsing_timeout=t), parse(answer, parsing_timeout=t),
                             timeout_seconds=t))
        except Exception:  # MemoryError included: the answer is wrong, the worker lives on
            ok = False
        out.write(b"1\n" if ok else b"0\n")
        out.flush()


if __name__ == "__main__":
    _worker_main()
