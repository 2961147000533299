"""Pure parts of the management terminal: health classification, takeover dry run, events from
snapshot differences, the SVG map of a hand-made snapshot, Kubernetes quantity parsing and the
completion script. No processes, no network."""

from __future__ import annotations

import copy
import subprocess
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from nasblade.terminal import health, kube, plan, svgmap
from nasblade.terminal.commands import completion
from nasblade.terminal.errors import UsageError
from nasblade.terminal.model import Device, Snapshot


@pytest.mark.parametrize(("slot_state", "age", "reachable", "expected"), [
    ("running", 0.1, True, "ok"),
    ("running", 0.1, None, "ok"),
    ("running", 0.1, False, "suspect"),
    ("running", 5.0, True, "suspect"),
    ("running", 5.0, False, "dead"),
    ("stopped", 0.1, True, "stopped"),
    (None, None, False, "dead"),
    (None, None, True, "unknown"),
])
def test_blade_state(slot_state: str | None, age: float | None, reachable: bool | None, expected: str) -> None:
    state, reason = health.blade_state(slot_state=slot_state, heartbeat_age=age, reachable=reachable, failure_timeout=2.0)
    assert state == expected
    assert (reason == "") == (expected == "ok")


def test_takeover_possible_to_an_idle_peer(snapshot: Snapshot) -> None:
    check = plan.check_takeover(snapshot, "fs1", to="b2")
    assert check.possible and check.reasons == []
    assert check.current == "b1"
    assert check.steps[0].startswith("b1 releases fs1")


def test_takeover_refused_with_every_reason(snapshot: Snapshot) -> None:
    dead = plan.check_takeover(snapshot, "fs1", to="b3")
    assert not dead.possible and dead.reasons == ["b3 is dead (heartbeat 9.0s old)"]
    other = plan.check_takeover(snapshot, "fs1", to="c1")
    assert not other.possible and "c1 is in cluster group g2, fs1 belongs to g1" in other.reasons
    same = plan.check_takeover(snapshot, "fs1", to="b1")
    assert same.reasons == ["b1 already serves fs1"]
    snapshot["groups"][0]["activeArea"] = "backup"
    assert any("backup area" in r for r in plan.check_takeover(snapshot, "fs1", to="b2").reasons)


def test_unknown_names_are_usage_errors(snapshot: Snapshot) -> None:
    with pytest.raises(UsageError, match="no file system 'nope' \\(known: fs1, fs2\\)"):
        plan.check_takeover(snapshot, "nope", to="b2")
    with pytest.raises(UsageError, match="no blade 'zz'"):
        plan.check_takeover(snapshot, "fs1", to="zz")
    with pytest.raises(UsageError, match="no cluster group"):
        plan.find_group(snapshot, "g9")


def test_events_from_two_snapshots(snapshot: Snapshot) -> None:
    cur: Any = copy.deepcopy(snapshot)
    cur["groups"][0]["blades"][0]["state"] = "dead"
    cur["groups"][0]["blades"][1]["fileSystems"] = ["fs1"]
    cur["fileSystems"][0].update(blade="b2", epoch=2)
    cur["groups"][0]["blades"][1]["softwareVersion"] = "1.1"
    cur["backups"] = [{"id": "j1", "group": "g1", "source": "procinfo[0]", "target": "backup[0]", "state": "running",
                       "bytesDone": 0, "bytesTotal": 1, "started": None, "finished": None, "trigger": None, "error": None}]
    events = plan.diff_events(snapshot, cur)
    kinds = [(e["kind"], e["object"]) for e in events]
    assert ("BladeState", "b1") in kinds
    assert ("Takeover", "fs1") in kinds
    assert ("Software", "b2") in kinds
    assert ("Backup", "g1") in kinds
    back: Any = copy.deepcopy(cur)
    back["fileSystems"][0].update(blade="b1", epoch=3)
    assert [e["kind"] for e in plan.diff_events(cur, back)] == ["GiveBack"]
    assert plan.diff_events(cur, cur) == []


def test_svg_map_names_every_blade_and_lu(snapshot: Snapshot) -> None:
    root = svgmap.build(snapshot).getroot()
    xml = ET.fromstring(ET.tostring(root))  # it serialises and parses back
    found: dict[str, set[str]] = {}
    for g in xml.iter("{http://www.w3.org/2000/svg}g"):
        found.setdefault(g.get("data-kind", ""), set()).add(g.get("data-name", ""))
    assert found["blade"] == {"b1", "b2", "b3", "c1"}
    assert found["lu"] == {"program", "procinfo", "backup", "fs-fs1", "fs-fs2"}
    fills = {g.get("data-name"): g.find("{http://www.w3.org/2000/svg}rect").get("fill")  # type: ignore[union-attr]
             for g in xml.iter("{http://www.w3.org/2000/svg}g") if g.get("data-kind") == "blade"}
    assert fills["b3"] == health.COLOURS["dead"] and fills["b1"] == health.COLOURS["ok"]


def test_svg_map_marks_a_file_system_whose_owner_died(snapshot: Snapshot) -> None:
    snapshot["groups"][0]["blades"][0]["state"] = "dead"  # b1, owner of fs1
    root = svgmap.build(snapshot).getroot()
    titles = {(g.get("data-kind"), g.get("data-name")): "".join(t.text or "" for t in g.iter("{http://www.w3.org/2000/svg}title"))
              for g in root.iter("{http://www.w3.org/2000/svg}g")}
    assert "NOT SERVED" in titles[("lu-extent", "fs-fs1")] and "NOT SERVED" not in titles[("lu-extent", "fs-fs2")]
    text = "".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))
    assert "not served: fs1" in text


@pytest.mark.parametrize(("text", "expected"), [("1Gi", 1 << 30), ("512M", 512_000_000), ("512Mi", 512 << 20), ("1073741824", 1 << 30),
                                                 (None, None), ("lots", None)])
def test_kube_quantity(text: str | None, expected: int | None) -> None:
    assert kube.quantity(text) == expected


def test_bash_completion_script_is_valid_and_completes() -> None:
    from nasblade.cli import build_parser

    script = completion.bash_script(build_parser(), prog="nasblade")
    for word in ("status", "backup", "takeover", "giveback", "map", "events", "watch", "--cross-group", "--dry-run"):
        assert word in script
    probe = script + '\nCOMP_WORDS=(nasblade take); COMP_CWORD=1; _nasblade_complete; echo "${COMPREPLY[@]}"\n' \
                     'COMP_WORDS=(nasblade takeover --dr); COMP_CWORD=2; _nasblade_complete; echo "${COMPREPLY[@]}"\n'
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.splitlines() == ["takeover", "--dry-run"]


def _args(**kw: Any) -> Any:
    import argparse

    base = {"data_dir": None, "config": None, "controller": None, "kube": False, "namespace": None,
            "context": None, "kubeconfig": None, "request_timeout": 1.0}
    return argparse.Namespace(**{**base, **kw})


def test_target_selection_errors(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from nasblade.terminal import target

    monkeypatch.delenv("NASBLADE_DATA_DIR", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    with pytest.raises(UsageError, match="no target"):
        target.open_source(_args())
    with pytest.raises(UsageError, match="not the data directory of an array"):
        target.open_source(_args(data_dir=tmp_path))
    cfg = Path(tmp_path) / "kubeconfig"
    cfg.write_text("apiVersion: v1\nkind: Config\ncurrent-context: c1\n"
                   "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:1'}}]\n"
                   "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c1, context: {cluster: k, user: u}}]\n")
    with pytest.raises(UsageError, match="no context 'c9'"):
        target.open_source(_args(kube=True, kubeconfig=cfg, context="c9"))
    with pytest.raises(UsageError, match="either --data-dir"):
        target.open_source(_args(kube=True, kubeconfig=cfg, data_dir=tmp_path))
    from nasblade.terminal.errors import Unreachable

    with pytest.raises(Unreachable, match="does not answer"):
        target.open_source(_args(kube=True, kubeconfig=cfg))


def test_help_has_examples_everywhere() -> None:
    """Every terminal command of ``nasblade`` and of ``kubectl nas`` shows examples in --help."""
    import argparse

    from nasblade.cli import build_parser
    from nasblade.terminal import kubectl

    def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    nasblade = subparsers(build_parser())
    for cmd in ("status", "backup", "takeover", "giveback", "map", "events", "watch", "completion"):
        assert "examples:" in nasblade[cmd].format_help(), cmd
    assert "examples:" in subparsers(nasblade["software"])["rollout"].format_help()
    plugin = kubectl.build_parser()
    assert plugin.prog == "kubectl nas"
    for cmd, sub in subparsers(plugin).items():
        assert "examples:" in sub.format_help(), cmd


# -- issue 16: version, help sections, completion, missing extra, vocabulary, watch ------------


def test_version_flag_and_command(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    import nasblade
    from nasblade import cli
    from nasblade.terminal import kubectl

    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out == f"nasblade {nasblade.__version__}\n"
    assert cli.main(["version", "-o", "json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["version"] == nasblade.__version__ and info["python"] and info["platform"]
    assert kubectl.main(["version"]) == 0
    assert capsys.readouterr().out.startswith(f"kubectl nas {nasblade.__version__} ")
    with pytest.raises(SystemExit):
        kubectl.main(["--version"])
    assert capsys.readouterr().out == f"kubectl-nas {nasblade.__version__}\n"


def test_help_lists_user_commands_before_daemon_roles() -> None:
    from nasblade.cli import COMMANDS, build_parser

    text = build_parser().format_help()
    terminal = text.index("management terminal")
    roles = text.index("daemon roles")
    assert terminal < text.index("set-up and tools") < roles
    for name, command in COMMANDS.items():
        line = f"\n  {name} "
        if command.section == "hidden":
            assert line not in text
        elif command.section == "role":
            assert text.index(line) > roles, name
        else:
            assert terminal < text.index(line) < roles, name
    for role in ("file-processor", "block-processor", "controller", "operator", "blade-file-processor", "boot"):
        assert COMMANDS[role].section == "role"


def _complete(script: str, words: str, cword: int) -> list[str]:
    # a stand-in for `nasblade __complete KIND TARGET...`: echoes the kind's names and the target it got
    fake = 'nasblade() { case "$2" in filesystems) echo fs1; echo fs2 ;; blades) echo g1-0; echo g1-1 ;;' \
           ' groups) echo g1; echo g2 ;; versions) echo 1.0; echo 2.0 ;; esac; echo "target:${*:3}" >&2; }\n'
    probe = fake + script + f'\nCOMP_WORDS=({words}); COMP_CWORD={cword}; _nasblade_complete; echo "${{COMPREPLY[@]}}"\n'
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True, timeout=30)
    return out.stdout.split()


def test_bash_completion_completes_names_from_the_array() -> None:
    from nasblade.cli import build_parser

    script = completion.bash_script(build_parser(), prog="nasblade")
    assert "__complete" not in _complete(script, "nasblade ''", 1)
    assert _complete(script, "nasblade takeover ''", 2) == ["fs1", "fs2"]
    assert _complete(script, "nasblade giveback --data-dir /d f", 4) == ["fs1", "fs2"]
    assert _complete(script, "nasblade takeover fs1 --to ''", 4) == ["g1-0", "g1-1"]
    assert _complete(script, "nasblade backup ''", 2) == ["g1", "g2"]
    assert _complete(script, "nasblade backup g1 --cross-group g", 4) == ["g1", "g2"]
    assert _complete(script, "nasblade software rollout ''", 3) == ["1.0", "2.0"]
    assert {"list", "rollout", "--program"} <= set(_complete(script, "nasblade software ''", 2))
    probe = 'nasblade() { echo "$@"; }\n' + script + \
        "\nCOMP_WORDS=(nasblade takeover -n storage --context c1 --kube ''); COMP_CWORD=7; _nasblade_names filesystems\n"
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.split() == ["__complete", "filesystems", "-n", "storage", "--context", "c1", "--kube"]


def test_fish_completion_script() -> None:
    from nasblade import cli

    script = completion.fish_script(cli.build_parser(), prog="nasblade",
                                    helps={n: c.help for n, c in cli.COMMANDS.items()})
    assert "complete -c nasblade -n __fish_use_subcommand -a takeover -d 'move a file system" in script
    assert "complete -c nasblade -n '__fish_seen_subcommand_from takeover' -l to -x -a '(__nasblade_names blades)'" in script
    assert "complete -c nasblade -n '__fish_seen_subcommand_from rollout' -a '(__nasblade_names versions)'" in script
    assert "nasblade __complete $argv[1] $target" in script and "__complete -d" not in script


def test_complete_names(snapshot: Snapshot) -> None:
    from nasblade.terminal.commands import complete

    snapshot["arrays"][0]["software"] = {"current": "1.0", "versions": ["2.0", "1.0"]}
    assert complete.names(snapshot, "groups") == ["g1", "g2"]
    assert complete.names(snapshot, "filesystems") == ["fs1", "fs2"]
    assert complete.names(snapshot, "blades") == ["b1", "b2", "b3", "c1"]
    assert complete.names(snapshot, "versions") == ["1.0", "2.0"]


def test_kubectl_nas_without_the_operator_extra(tmp_path: Any) -> None:
    import os
    import sys

    for module in ("pykube", "kubernetes", "kopf"):  # what `pip install nasblade` leaves out
        (tmp_path / module).mkdir()
        (tmp_path / module / "__init__.py").write_text(f"raise ModuleNotFoundError('no module', name={module!r})\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "KUBECONFIG": str(tmp_path / "kubeconfig")}
    out = subprocess.run([sys.executable, "-m", "nasblade.terminal.kubectl", "status"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2, out.stderr
    assert "pip install 'nasblade[operator]'" in out.stderr and "Traceback" not in out.stderr


def test_active_area_uses_the_clustergroup_vocabulary() -> None:
    import yaml
    from nasblade.terminal.model import area_word

    assert (area_word("primary"), area_word("portion"), area_word("backup"), area_word(None)) == \
        ("portion", "portion", "backup", None)
    from pathlib import Path

    crd = yaml.safe_load((Path(__file__).resolve().parents[2] / "crds" / "clustergroup.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert set(schema["activeArea"]["enum"]) == {"portion", "backup"}


def test_watch_fits_a_24_line_terminal_owners_and_blades_first(snapshot: Snapshot) -> None:
    import io

    from nasblade.terminal import render
    from rich.console import Console

    events = [{"time": f"2026-01-01T00:00:{i:02d}Z", "kind": "Heartbeat", "object": "b3", "message": f"event {i}"}
              for i in range(30)]
    view = render.watch_view(snapshot, events, width=100, height=24)  # type: ignore[arg-type]
    out = io.StringIO()
    Console(file=out, width=100, height=24, highlight=False).print(view)
    lines = out.getvalue().splitlines()
    assert len(lines) <= 24
    text = out.getvalue()
    for word in ("fs1", "fs2", "b1", "b2", "b3", "c1", "dead", "event 29"):  # owners, every blade, the latest event
        assert word in text, word
    assert text.index("File systems") < text.index("Blades") < text.index("Events")
    assert "event 0 " not in text  # older events made room


def test_kube_device_health_from_the_diskarray_status() -> None:
    """``kubectl nas status`` shows what the operator copied from the controller: each device's
    state (why it failed, how far its rebuild is) and the redundancy line."""
    devices = [Device(index=i, size=1 << 30, free=0, path=f"PVC dev-{i}") for i in range(3)]
    status = {"redundancy": {"protection": "mirror-3", "state": "degraded", "repairedBlocks": 2, "lostBlocks": 0,
                             "rebuild": [{"device": 2, "done": 1, "total": 200}]},
              "devices": [{"index": 0, "state": "ok"}, {"index": 1, "state": "failed", "reason": "I/O errors"},
                          {"index": 2, "state": "rebuilding", "rebuilt": 50}]}
    red = kube.device_health(devices, status)
    assert red == {"protection": "mirror-3", "state": "degraded", "repairedBlocks": 2, "lostBlocks": 0}
    assert [(d.get("state"), d.get("detail")) for d in devices] == [
        ("ok", None), ("failed", "I/O errors"), ("rebuilding", "25%")]
    plain = [Device(index=0, size=1, free=0, path=None)]
    assert kube.device_health(plain, {}) is None and "state" not in plain[0]
