"""Drawing snapshots for people (rich tables) and for scripts (JSON, YAML).

``commands`` hands a ``model.Snapshot`` (or any JSON-able value) and a ``rich.console.Console``
here; nothing in this module does I/O other than writing to that console or stream.
"""

from __future__ import annotations

import io
import json
import os
from typing import IO, Any

import yaml
from rich import box
from rich.console import Console, ConsoleRenderable, Group
from rich.table import Table
from rich.text import Text

from nasblade.terminal.health import RICH_STYLES
from nasblade.terminal.model import Event, Snapshot, VolumeList


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" or value >= 100 else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)  # pragma: no cover


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def pct(ratio: Any) -> str:
    return "-" if not isinstance(ratio, int | float) else f"{100 * ratio:.1f}%"


def write_data(value: Any, *, fmt: str, stream: IO[str]) -> None:
    """``-o json`` / ``-o yaml``: the value as a document, keys sorted."""
    if fmt == "yaml":
        stream.write(yaml.safe_dump(json.loads(json.dumps(value)), sort_keys=True))
    else:
        stream.write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def _state(state: str) -> Text:
    return Text(state, style=RICH_STYLES.get(state, ""))


def status_tables(snap: Snapshot) -> Group:
    """The ``status`` view: arrays, devices, LUs, groups with blades, file systems, backups."""
    parts: list[Any] = []
    for a in snap["arrays"]:
        t = Table(title=f"Array {a['name']}", title_justify="left", show_header=False)
        t.add_column("field", style="bold")
        t.add_column("value")
        load, cache = a["load"] or {}, a["cache"] or {}
        mbps = load.get("mbps") or {}
        sw = a["software"] or {}
        t.add_row("ready", "-" if a["ready"] is None else ("yes" if a["ready"] else "no"))
        t.add_row("controller", a["controller"] or "-")
        t.add_row("capacity", f"{size(a['size'])}, free {size(a['free'])}, {len(a['devices'])} devices, {len(a['lus'])} LUs")
        t.add_row("cache", f"{size(cache.get('used'))} of {size(cache.get('size'))} used, dirty {pct(cache.get('dirtyRatio'))}, "
                           f"hit ratio {pct(cache.get('hitRatio'))}" if cache else "-")
        t.add_row("load", f"{load.get('iops', 0):.0f} IOPS, {mbps.get('read', 0):.1f} MB/s read, "
                          f"{mbps.get('write', 0):.1f} MB/s write, queue {load.get('queueDepth', 0):.1f}" if load else "-")
        t.add_row("software", f"{sw.get('current') or '-'} (available: {', '.join(sw.get('versions') or []) or '-'})"
                  + (f" [red]{sw['error']}[/]" if sw.get("error") else ""))
        red = a.get("redundancy")
        if red:
            colour = "green" if red.get("state") == "ok" else "red"
            t.add_row("protection", f"{red.get('protection')}, [{colour}]{red.get('state')}[/], "
                                    f"repaired {red.get('repairedBlocks', 0)} block(s), lost {red.get('lostBlocks', 0)}")
        parts.append(t)
        if a["devices"]:
            d = Table(title="Devices", title_justify="left")
            states = any("state" in dev for dev in a["devices"])
            for col in ("#", "size", "free", "path", *(("state",) if states else ())):
                d.add_column(col)
            for dev in a["devices"]:
                extra = ((dev.get("state", "-") + (f" ({dev['detail']})" if dev.get("detail") else ""),)
                         if states else ())
                d.add_row(str(dev["index"]), size(dev["size"]), size(dev["free"]), dev["path"] or "-", *extra)
            parts.append(d)
        if a["lus"]:
            lt = Table(title="Logical units", title_justify="left")
            for col in ("LU", "kind", "size", "devices", "file system", "reservation"):
                lt.add_column(col)
            for lu in a["lus"]:
                res = lu["reservation"]
                lt.add_row(lu["name"], lu["kind"], size(lu["size"]), ",".join(map(str, lu["devices"])) or "-",
                           lu["fileSystem"] or "-", f"{res['holder']} @{res['epoch']}" if res else "-")
            parts.append(lt)
    for g in snap["groups"]:
        bt = Table(title=f"Cluster group {g['name']} (array {g['array']}, portion {g['portion']}, "
                         f"active area {g['activeArea'] or '-'})", title_justify="left")
        for col in ("blade", "state", "file systems", "heartbeat", "software", "area", "slot"):
            bt.add_column(col)
        for b in g["blades"]:
            state = _state(b["state"])
            if b["reason"]:
                state.append(f" ({b['reason']})", style="dim")
            bt.add_row(b["name"], state, ", ".join(b["fileSystems"]) or "-", age(b["heartbeatAge"]),
                       b["softwareVersion"] or "-", b["activeArea"] or "-", "-" if b["slot"] is None else str(b["slot"]))
        parts.append(bt)
        last = g["lastBackup"]
        if last:
            parts.append(Text(f"  last backup: {last['state']} {last['source']} -> {last['target']} "
                              f"started {last['started'] or '-'} finished {last['finished'] or '-'}"
                              + (f" ({last['error']})" if last["error"] else "")))
        if g["rollout"]:
            r = g["rollout"]
            parts.append(Text(f"  rollout: {r.get('targetVersion')} {r.get('blade') or ''} {r.get('step') or ''}"))
    if snap["fileSystems"]:
        ft = Table(title="File systems", title_justify="left")
        for col in ("file system", "group", "served by", "home", "epoch", "LU", "size", "endpoint"):
            ft.add_column(col)
        for f in snap["fileSystems"]:
            pin = f.get("pinnedTo")
            preferred = pin or f["homeBlade"]
            away = f["blade"] is not None and preferred is not None and f["blade"] != preferred
            ft.add_row(f["name"], f["group"], Text(f["blade"] or "-", style="yellow" if away else ""),
                       (f["homeBlade"] or "-") + (f" (pinned to {pin})" if pin else ""), "-" if f["epoch"] is None else str(f["epoch"]), f["lu"],
                       size(f["size"]), f["endpoint"] or "-")
        parts.append(ft)
    if snap["backups"]:
        kt = Table(title="Backups (latest 10)", title_justify="left")
        for col in ("group", "copy", "state", "bytes", "started", "finished", "trigger"):
            kt.add_column(col)
        for bk in snap["backups"][-10:]:
            kt.add_row(bk["group"], f"{bk['source']} -> {bk['target']}",
                       Text(bk["state"], style="green" if bk["state"] in ("succeeded", "Succeeded") else
                            "yellow" if bk["state"] == "running" else "red"),
                       f"{size(bk['bytesDone'])} / {size(bk['bytesTotal'])}", bk["started"] or "-",
                       bk["finished"] or "-", bk["trigger"] or "-")
        parts.append(kt)
    return Group(*parts)


def volumes_view(listing: VolumeList) -> Group:
    """The ``volumes`` view: one row per CSI volume (file-system volumes with the group and
    blade serving them, directory volumes with their quota and usage), each snapshot on a row
    of its own under its volume, then what could not be read."""
    t = Table(title="CSI volumes", title_justify="left")
    for col in ("volume", "mode", "file system", "group", "blade", "size", "used", "files", "state", "name"):
        t.add_column(col, justify="right" if col in ("size", "used", "files") else "left")
    for v in listing["volumes"]:
        t.add_row(v["id"], v["mode"], v["fileSystem"] or "-", v["group"] or "-", v["blade"] or "-",
                  size(v["size"]) if v["mode"] == "filesystem" else f"quota {size(v['size'])}",
                  size(v["usedBytes"]), "-" if v["files"] is None else str(v["files"]), v["state"] or "-",
                  v["claim"] or v["name"] or "-")
        for sn in v["snapshots"]:
            ready = "-" if sn["ready"] is None else "ready" if sn["ready"] else "not ready"
            t.add_row(Text(f"  snapshot {sn['id']}", style="dim"), "", "", "", "", size(sn["size"]), "", "",
                      Text(ready, style="green" if sn["ready"] else "yellow"), sn["name"] or "-")
    parts: list[Any] = [t if listing["volumes"] else Text("no CSI volumes")]
    parts.extend(Text(f"note: {p}", style="yellow") for p in listing["problems"])
    return Group(*parts)


def _owners_table(snap: Snapshot) -> Table:
    t = Table(title="File systems", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("file system", "served by", "home", "epoch", "group"):
        t.add_column(col)
    for f in snap["fileSystems"]:
        preferred = f.get("pinnedTo") or f["homeBlade"]
        away = f["blade"] is not None and preferred is not None and f["blade"] != preferred
        t.add_row(f["name"], Text(f["blade"] or "-", style="red" if f["blade"] is None else "yellow" if away else ""),
                  f["homeBlade"] or "-", "-" if f["epoch"] is None else str(f["epoch"]), f["group"])
    return t


def _blades_table(snap: Snapshot) -> Table:
    t = Table(title="Blades", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("blade", "group", "state", "file systems", "heartbeat", "area"):
        t.add_column(col)
    for g in snap["groups"]:
        for b in g["blades"]:
            state = _state(b["state"])
            if b["reason"]:
                state.append(f" ({b['reason']})", style="dim")
            t.add_row(b["name"], g["name"], state, ", ".join(b["fileSystems"]) or "-", age(b["heartbeatAge"]),
                      b["activeArea"] or "-")
    return t


def _array_line(snap: Snapshot) -> Text:
    line = Text()
    for a in snap["arrays"]:
        load, cache = a["load"] or {}, a["cache"] or {}
        line.append(f"array {a['name']}: ", style="bold")
        line.append(f"free {size(a['free'])} of {size(a['size'])}, cache dirty {pct(cache.get('dirtyRatio'))}, "
                    f"{load.get('iops', 0):.0f} IOPS  ")
    line.append(snap["time"], style="dim")
    return line


def lines_needed(renderable: Any, *, width: int) -> int:
    """How many lines ``renderable`` takes on a console ``width`` columns wide."""
    probe = Console(width=width, file=io.StringIO(), highlight=False)
    return len(probe.render_lines(renderable, probe.options, pad=False))


def watch_view(snap: Snapshot, events: list[Event], *, width: int, height: int) -> Group:
    """The ``watch`` screen, ``height`` lines at most: what changes first -- who serves each
    file system, then every blade's health -- then a one-line array summary, then as many of
    the latest ``events`` as still fit (``status`` has the devices, LUs and backups)."""
    head: list[ConsoleRenderable] = [_owners_table(snap), _blades_table(snap), _array_line(snap)]
    for n in range(len(events), -1, -1):
        view = Group(*head, events_table(events[len(events) - n:]))
        if lines_needed(view, width=width) <= height:
            return view
    return Group(*head)


def events_table(events: list[Event]) -> Table:
    t = Table(title="Events", title_justify="left")
    for col in ("time", "kind", "object", "message"):
        t.add_column(col)
    for e in events:
        t.add_row(e["time"], e["kind"], e["object"], e["message"])
    return t


def event_line(e: Event) -> str:
    return f"{e['time']}  {e['kind']:<13} {e['object']:<16} {e['message']}"


def console(stream: IO[str] | None = None, *, width: int | None = None) -> Console:
    """A console on ``stream``; when that is not a terminal (a pipe, a file, a test) and
    ``COLUMNS`` is not set, 160 columns rather than rich's 80, so tables stay readable."""
    c = Console(file=stream, width=width, highlight=False, soft_wrap=False)
    if width is None and not c.is_terminal and "COLUMNS" not in os.environ:
        c.width = 160
    return c
