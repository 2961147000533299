"""``nasblade --log-format`` (nasblade/logformat.py): JSON lines from every role, inherited by
the processes a role starts; text stays the default."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from nasblade import logformat


def _run(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != logformat.ENV}
    full.update(env or {})
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=full,
                          timeout=60, check=True)


CHILD = ("import logging, subprocess, sys; from nasblade import logformat; "
         "logformat.configure(sys.argv[1], role='parent'); logging.getLogger('nb.x').warning('parent %d', 1); "
         "subprocess.run([sys.executable, '-c', 'import os; print(os.environ.get(\"NASBLADE_LOG_FORMAT\"))'])")


def test_json_lines_and_inheritance() -> None:
    r = _run(CHILD, "json")
    line = json.loads(r.stderr.strip().splitlines()[-1])
    assert line["message"] == "parent 1" and line["level"] == "warning" and line["logger"] == "nb.x"
    assert line["role"] == "parent" and line["time"].endswith("+00:00") and line["pid"] > 0
    assert r.stdout.strip() == "json"  # a child started by this process logs the same way


def test_text_is_the_default_and_leaves_logging_alone() -> None:
    r = _run(CHILD, "text")
    assert r.stdout.strip() == "text"
    assert "parent 1" in r.stderr and not r.stderr.lstrip().startswith("{")


def test_exceptions_and_bad_format() -> None:
    f = logformat.JsonFormatter("controller")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        rec = logging_record(exc=sys.exc_info())
    out = json.loads(f.format(rec))
    assert "RuntimeError: boom" in out["exception"] and out["role"] == "controller"
    with pytest.raises(ValueError, match="log format"):
        logformat.configure("xml")


def test_cli_option_and_environment() -> None:
    code = "from nasblade import cli; p = cli.build_parser(); print(p.parse_args(['version']).log_format)"
    assert _run(code).stdout.strip() == "text"
    assert _run(code, env={logformat.ENV: "json"}).stdout.strip() == "json"
    code = "from nasblade import cli; print(cli.build_parser().parse_args(['--log-format', 'json', 'version']).log_format)"
    assert _run(code).stdout.strip() == "json"


def logging_record(*, exc: object) -> object:
    import logging

    return logging.LogRecord("nb", logging.ERROR, __file__, 1, "failed", None, exc)  # type: ignore[arg-type]


def test_the_csi_plugin_logs_json_too() -> None:
    """``nasblade-csi`` (the CSI controller and node plugins) takes ``--log-format`` and
    ``NASBLADE_LOG_FORMAT`` like every other role."""
    code = ("import logging, sys; from nasblade_csi import main; "
            "main.setup_logging(main.parse(sys.argv[1:])); logging.getLogger('nasblade_csi.node').info('mounted')")
    line = json.loads(_run(code, "--role", "node", "--node-id", "n1", env={logformat.ENV: "json"}).stderr.strip())
    assert line["message"] == "mounted" and line["role"] == "csi-node" and line["level"] == "info"
    r = _run(code, "--role", "node", "--node-id", "n1", "--log-format", "text", env={logformat.ENV: "json"})
    assert "mounted" in r.stderr and not r.stderr.lstrip().startswith("{")
