"""`modelport serve` refusing bad input in one line (exit 2) before anything listens or loads."""

from __future__ import annotations

import socket

from tests.conftest import assert_one_line_error


def test_bad_options_and_a_taken_port_are_one_line_errors(cli, tiny_gguf, tmp_path):
    assert_one_line_error(cli("serve", tmp_path / "missing.gguf", "--port", "0"), "missing.gguf")
    assert_one_line_error(cli("serve", tiny_gguf, "--port", "0", "--parallel", "0"), "--parallel must be at least 1")
    assert_one_line_error(cli("serve", tiny_gguf, "--port", "0", "--queue", "-1"), "--queue must be 0 or more")
    assert_one_line_error(cli("serve", tiny_gguf, "--port", "70000"), "--port must be 0-65535")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_line_error(cli("serve", tiny_gguf, "--port", port), f"cannot listen on 127.0.0.1:{port}")
