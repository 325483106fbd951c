"""Atheris target for the Wayland filter's session (what a hostile VM sends through waypipe):
framing, argument decoding against the protocol tables, the object table, the registry and
window-marking policy. The first input byte says how many descriptors (0-3, of /dev/null) come
with the rest. Any exception other than ``ViolationError`` is a finding, and so is a leaked
descriptor.

    python fuzz/fuzz_wayland.py -runs=20000 fuzz/corpus/wayland

The test suite runs it for a bounded number of iterations (tests/integration/test_fuzz.py).
Without atheris installed, ``python fuzz/fuzz_wayland.py DIR...`` runs the corpus once.
"""

import os

from driver import run  # fuzz/driver.py: the script's directory is on sys.path

from vmsilo.testing.wayland import prepared_session
from vmsilo.wayland.protocols import load_tables
from vmsilo.wayland.session import ViolationError

TABLES = load_tables()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_one_input(data: bytes) -> None:
    if not data:
        return
    before = open_fds()
    session = prepared_session("fuzz", TABLES)
    fds = [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC) for _ in range(data[0] & 3)]
    try:
        out = session.from_client(data[1:], fds)
        out.close_fds()
    except ViolationError:
        pass
    finally:
        session.close()
    if open_fds() != before:
        raise AssertionError(f"descriptors leaked: {open_fds() - before}")


def main() -> None:
    run(test_one_input)


if __name__ == "__main__":
    main()
