"""bridge/relayscan.py: the relay step, in Python (the reference) and in C
(``_sysadm_relayscan``, from bridge/relayscan.c).  Both must give the same answer for every
input, including frames they must refuse and buffers cut anywhere.

CI sets SYSADM_REQUIRE_C_RELAYSCAN=1, so a C module that failed to build fails the run
there instead of skipping its half of these tests."""

import os
import struct

import pytest
from hypothesis import HealthCheck, assume, example, given, settings, strategies as st

from bridge import relayscan
from sysadmd.wire import frames

try:
    import _sysadm_relayscan
except ImportError as e:  # pragma: no cover - depends on the build
    _sysadm_relayscan = None
    WHY_NOT_BUILT = str(e)
else:
    WHY_NOT_BUILT = ""

py_scan = relayscan.py_scan_one
needs_c = pytest.mark.skipif(_sysadm_relayscan is None,
                             reason=f"the C relay step is not built ({WHY_NOT_BUILT})")
IMPLEMENTATIONS = [pytest.param(py_scan, id="python"),
                   pytest.param(getattr(_sysadm_relayscan, "scan_one", None), id="C", marks=needs_c)]


def masked(payload, opcode=frames.TEXT, fin=True, mask=b"\x37\xfa\x21\x3d"):
    return frames.encode_frame(opcode, payload, fin=fin, mask=mask)


def test_which_implementation_runs_is_reported():
    print(f"relay step: {relayscan.IMPLEMENTATION}")
    if os.environ.get("SYSADM_REQUIRE_C_RELAYSCAN") == "1":
        assert _sysadm_relayscan is not None, WHY_NOT_BUILT
        expected_dir = os.environ.get("SYSADM_RELAYSCAN_FROM")  # the sanitizer build, below
        if expected_dir:
            assert os.path.dirname(_sysadm_relayscan.__file__) == expected_dir
        assert relayscan.scan_one is _sysadm_relayscan.scan_one
        assert relayscan.IMPLEMENTATION.startswith("C")
    elif _sysadm_relayscan is None:
        assert relayscan.scan_one is py_scan


@pytest.mark.parametrize("scan", IMPLEMENTATIONS)
class TestKnownFrames:
    def test_a_relay_frame_is_unmasked_and_sent_on_from_the_sender(self, scan):
        data = b"xx" + masked(b"::{dest}\nhello") + b"rest"
        dest, frame, end = scan(data, 2, len(data), 1 << 20, b"::{src}")
        assert dest == "::{dest}"
        assert frame == b"\x81\x0d::{src}\nhello"
        assert end == len(data) - 4

    def test_the_two_byte_length_form_both_ways(self, scan):
        body = b"d\n" + b"A" * 300
        dest, frame, end = scan(masked(body), 0, 10_000, 1 << 20, b"S" * 20)
        assert (dest, end) == ("d", 8 + len(body))
        size = 20 + len(body) - 1
        assert frame == struct.pack(">BBH", 0x81, 126, size) + b"S" * 20 + body[1:]
        # a short frame whose new frame grows past 125 bytes
        body = b"d\n" + b"B" * 100
        dest, frame, _ = scan(masked(body), 0, 10_000, 1 << 20, b"S" * 40)
        assert frame[:4] == struct.pack(">BBH", 0x81, 126, 40 + 101)

    @pytest.mark.parametrize("data", [
        masked(b"{\"namespace\":\"rpc\"}\n"),               # a call for the bridge itself
        masked(b"\nno destination"),                        # empty first line
        masked(b"no newline at all"),
        masked("d\ncaf\u00e9".encode()),                    # not ASCII
        masked(b"d\nx", opcode=frames.BINARY),
        masked(b"d\nx", fin=False),                         # a fragment
        masked(b"d\nx", opcode=frames.PING),
        frames.encode_frame(frames.TEXT, b"d\nx", mask=None),  # unmasked
        masked(b""),
        masked(b"d\n" + b"x" * (relayscan.MAX_PAYLOAD - 2)),  # 2048 bytes: the general path
        masked(b"d\n" + b"x" * 70_000),                     # the 8-byte length form
        b"\x81",
    ], ids=["brace", "empty-dest", "no-newline", "non-ascii", "binary", "fragment", "ping",
            "unmasked", "empty", "2048", "64-bit-length", "one-byte"])
    def test_frames_for_the_general_path_are_refused(self, scan, data):
        assert scan(data, 0, len(data), 1 << 20, b"src") is None

    def test_the_largest_frame_taken(self, scan):
        data = masked(b"d\n" + b"x" * (relayscan.MAX_PAYLOAD - 3))
        assert scan(data, 0, len(data), 1 << 20, b"src")[2] == len(data)

    def test_a_frame_over_the_message_limit_is_refused(self, scan):
        data = masked(b"d\n" + b"x" * 98)
        assert scan(data, 0, len(data), 99, b"src") is None
        assert scan(data, 0, len(data), 100, b"src") is not None

    def test_a_frame_not_all_read_is_refused_at_every_cut(self, scan):
        data = masked(b"dest\n" + b"y" * 200)
        for cut in range(len(data)):
            assert scan(data, 0, cut, 1 << 20, b"src") is None, cut
        assert scan(data, 0, len(data), 1 << 20, b"src") is not None

    def test_nothing_is_read_past_the_buffer(self, scan):
        data = masked(b"dest\n" + b"y" * 200)
        short = data[:50]
        assert scan(short, 0, 1_000_000, 1 << 20, b"src") is None   # an end past the buffer
        assert scan(data, len(data) + 5, len(data) + 100, 1 << 20, b"src") is None
        assert scan(data, -1, len(data), 1 << 20, b"src") is None

    def test_any_buffer_type(self, scan):
        data = masked(b"dest\nz")
        for buf in (data, bytearray(data), memoryview(data)):
            assert scan(buf, 0, len(data), 1 << 20, b"s")[1] == b"\x81\x03s\nz"


@needs_c
def test_the_c_step_checks_its_arguments():
    scan = _sysadm_relayscan.scan_one
    data = masked(b"d\nx")
    with pytest.raises(TypeError):
        scan(data, 0, len(data), 100)
    with pytest.raises(TypeError):
        scan(data, 0, len(data), 100, "src")  # the prefix must be bytes
    with pytest.raises(TypeError):
        scan(12, 0, 2, 100, b"src")
    with pytest.raises(OverflowError):
        scan(data, 1 << 80, len(data), 100, b"src")


# --- the property: C == Python on anything -------------------------------------------------

payload_text = st.one_of(
    st.binary(max_size=2100),
    st.builds(lambda d, b: d + b"\n" + b,
              st.text("abc:{}-0123456789", max_size=40).map(str.encode),
              st.binary(max_size=300) | st.text(max_size=300).map(str.encode)),
)

any_frame = st.builds(
    lambda payload, opcode, fin, mask: frames.encode_frame(opcode, payload, fin=fin, mask=mask),
    payload_text,
    st.sampled_from([frames.TEXT, frames.TEXT, frames.TEXT, frames.BINARY, frames.CONTINUATION,
                     frames.PING, frames.CLOSE]),
    st.booleans() | st.just(True),
    st.none() | st.binary(min_size=4, max_size=4),
)
# Mostly frames the relay takes (ASCII "<dest>\n<body>", masked), so that runs of them and
# every refusal right after one are covered.
relay_frame = st.builds(
    lambda dest, body, mask: frames.encode_frame(frames.TEXT, dest + b"\n" + body, mask=mask),
    st.text("abcdef:{}-0123456789", min_size=1, max_size=40).map(str.encode),
    st.binary(max_size=400).map(lambda b: bytes(c & 0x7F for c in b)) | st.binary(max_size=2100),
    st.binary(min_size=4, max_size=4),
)
frame_bytes = st.one_of(relay_frame, relay_frame, any_frame)


@needs_c
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frame_bytes, min_size=1, max_size=5), st.binary(max_size=8),
       st.integers(0, 3000), st.integers(0, 64), st.binary(max_size=64),
       st.integers(-2, 30), st.integers(-20, 5))
@example([masked(b"a\n" + b"q" * 200)], b"", 1 << 20, 0, b"::{id}", 0, 0)
def test_c_and_python_agree_on_anything(frames_list, garbage, limit, cut, prefix, start_shift, end_shift):
    data = b"".join(frames_list) + garbage
    n = max(0, len(data) - cut + end_shift)
    pos = 0
    while pos <= len(data):
        start = max(-1, pos + min(start_shift, 0))
        got_c = _sysadm_relayscan.scan_one(data, start, n, limit, prefix)
        got_py = py_scan(data, start, n, limit, prefix)
        assert got_c == got_py
        if got_py is None:
            break
        pos = got_py[2]


@needs_c
@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=64), st.integers(0, 80), st.integers(-3, 80))
def test_c_and_python_agree_on_raw_bytes(data, pos, n):
    assume(pos <= 80)
    assert _sysadm_relayscan.scan_one(data, pos, n, 1 << 20, b"p") == py_scan(data, pos, n, 1 << 20, b"p")


# --- the C step under AddressSanitizer and UndefinedBehaviorSanitizer -----------------------

def _gcc_runtime(name):
    import shutil
    import subprocess
    if shutil.which("gcc") is None:
        return None
    path = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True).stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else None


@pytest.mark.slow
def test_the_c_step_under_sanitizers(tmp_path):
    """Builds bridge/relayscan.c with -fsanitize=address,undefined and runs this file's
    tests against that build in a child Python: any out-of-bounds read or write, or
    undefined behaviour, in the C step fails it."""
    import subprocess
    import sys
    import sysconfig
    asan, ubsan = _gcc_runtime("libasan.so"), _gcc_runtime("libubsan.so")
    if asan is None or ubsan is None:
        pytest.skip("gcc with libasan and libubsan is not installed")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = tmp_path / ("_sysadm_relayscan" + sysconfig.get_config_var("EXT_SUFFIX"))
    build = subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer",
                            "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                            "-I", sysconfig.get_paths()["include"], os.path.join(root, "bridge", "relayscan.c"),
                            "-o", str(target)], capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    env = {**os.environ, "LD_PRELOAD": f"{asan} {ubsan}", "ASAN_OPTIONS": "detect_leaks=0",
           "PYTHONMALLOC": "malloc",  # so that ASan sees every Python object's bounds
           "PYTHONPATH": os.pathsep.join([str(tmp_path), root]), "SYSADM_REQUIRE_C_RELAYSCAN": "1",
           "SYSADM_RELAYSCAN_FROM": str(tmp_path)}
    # -s: a sanitizer report goes to stderr as the child dies; captured, it would be lost
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-p", "no:xdist",
                          "-k", "not sanitizers", os.path.abspath(__file__)],
                         cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-1000:]
