"""The `routelet` console script: help texts, route (argument and stdin), clean errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from routers import onnx_folder, tfidf_folder  # noqa: F401  (fixtures)

from routelet.cli import COMMANDS, main

SCRIPT = str(Path(sys.executable).parent / "routelet")


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], ["route", "serve", "examples:", "--help"]),
        (["route"], ["--router", "--top-k", "--threads", "stdin", "examples:", "routelet route"]),
        (["serve"], ["--router", "--host", "--port", "--api-key", "ROUTELET_API_KEY", "--threads",
                     "examples:", "/docs"]),
    ],
)
def test_help(capsys, argv, expected):
    with pytest.raises(SystemExit) as done:
        main(argv + ["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for word in expected:
        assert word in out


def test_every_command_has_help(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit):
            main([name, "--help"])
        assert "usage: routelet " + name in capsys.readouterr().out


def test_route_prints_one_json_line(capsys, tfidf_folder):
    assert main(["route", "what is my account balance", "--router", str(tfidf_folder), "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    result = json.loads(out)
    assert result["route"] == "banking" and len(result["top_k"]) == 2


def test_route_default_router_folder_is_where_dvc_repro_puts_it(capsys, tfidf_folder, monkeypatch, tmp_path):
    (tmp_path / "data").mkdir()
    shutil.copytree(tfidf_folder, tmp_path / "data" / "router")
    monkeypatch.chdir(tmp_path)
    assert main(["route", "my flight"]) == 0
    assert json.loads(capsys.readouterr().out)["route"] == "travel"


@pytest.mark.parametrize("kind", ["tfidf", "onnx"])
def test_stdin_mode_one_line_per_request(request, kind):
    folder = request.getfixturevalue(f"{kind}_folder")
    done = subprocess.run([SCRIPT, "route", "--router", str(folder)], input="balance\nairport flight\njoke\n",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [json.loads(line)["route"] for line in lines] == ["banking", "travel", "oos"]


def test_router_error_is_one_clean_line(tmp_path):
    done = subprocess.run([SCRIPT, "route", "hello", "--router", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert str(tmp_path / "missing") in done.stderr and "--router" in done.stderr


@pytest.mark.parametrize("kind", ["tfidf", "onnx"])
def test_stdin_line_that_is_not_utf8_is_routed_and_the_rest_too(request, kind):
    folder = request.getfixturevalue(f"{kind}_folder")
    data = b"caf\xe9 balance\r\nairport flight\n\n   \n\xff\xfe\x00\nsend money to my payee"  # no final newline
    done = subprocess.run([SCRIPT, "route", "--router", str(folder)], input=data, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [r["route"] for r in results] == ["banking", "travel", "oos", "oos", "oos", "banking"]
    assert [r["abstain_reason"] for r in results[2:5]] == ["no readable content"] * 3
    warnings = done.stderr.decode().splitlines()
    assert len(warnings) == 2 and "Traceback" not in done.stderr.decode()
    assert "stdin line 1: not valid UTF-8 (byte 4)" in warnings[0] and "stdin line 5:" in warnings[1]


def test_stdin_byte_order_mark_is_dropped(tfidf_folder):
    done = subprocess.run([SCRIPT, "route", "--router", str(tfidf_folder)], input=b"\xef\xbb\xbfbalance\n",
                          capture_output=True, timeout=120)
    assert done.returncode == 0 and done.stderr == b""
    assert json.loads(done.stdout)["route"] == "banking"


def test_argument_that_is_not_utf8_is_routed(tfidf_folder):
    done = subprocess.run([SCRIPT.encode(), b"route", b"caf\xe9 what is my account balance", b"--router",
                           str(tfidf_folder).encode()], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["route"] == "banking"


@pytest.mark.parametrize("value, message", [("0", "0 is not allowed: give 1 or more"),
                                            ("-5", "-5 is not allowed: give 1 or more"),
                                            ("two", "'two' is not a whole number")])
def test_top_k_must_be_positive(capsys, tfidf_folder, value, message):
    with pytest.raises(SystemExit) as done:
        main(["route", "balance", "--router", str(tfidf_folder), "--top-k", value])
    assert done.value.code == 2
    assert f"argument --top-k: {message}" in capsys.readouterr().err


def test_garbage_argument_abstains_with_a_reason(capsys, tfidf_folder):
    assert main(["route", "\U0001F642\u200b", "--router", str(tfidf_folder)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["abstain"], result["route"], result["abstain_reason"]) == (True, "oos", "no readable content")
