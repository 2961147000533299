"""The picture of an array: an SVG drawn from a ``model.Snapshot`` with the standard library.

Layout, top to bottom, one block per array:

- the devices, side by side, widths proportional to their sizes; inside each device the LUs'
  extents at their exact place (``x = device x + width * offset / device size``, from the
  controller's LU listing; each carries ``data-device``, ``data-offset``, ``data-length``),
  coloured by kind, the rest free space; a source that does not know the placement (a
  DiskArray status without ``lus`` yet) gives no extents, and each LU's share ``size / len(devices)`` is drawn
  packed from the left instead;
- the areas: the processor-info LU cut into one portion per cluster group and the backup LU
  into one backup area per portion; the area a group runs from is outlined;
- per cluster group, its blades coloured by health (``health.COLOURS``) with the file systems
  each one serves, and the LU behind each file system.

Every drawn object carries ``data-kind`` and ``data-name`` attributes and a ``<title>`` (a
tooltip in browsers), so tests and scripts can find blades and LUs in the XML. ``to_png``
converts with ``rsvg-convert`` (package librsvg2-bin) or ImageMagick 7's ``magick``.
"""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from nasblade.terminal.health import COLOURS
from nasblade.terminal.model import ArrayView, Group, Snapshot
from nasblade.terminal.render import size

SVG_NS = "http://www.w3.org/2000/svg"
WIDTH = 960
MARGIN = 20
KIND_COLOURS = {
    "program": "#7b61ff",
    "processorInfo": "#0f9bd7",
    "backup": "#4fb3a9",
    "fileSystem": "#f28c28",
    "other": "#b0b0b0",
}
FREE_COLOUR = "#eceff3"


class _Canvas:
    def __init__(self) -> None:
        ET.register_namespace("", SVG_NS)
        self.root = ET.Element(f"{{{SVG_NS}}}svg", {"version": "1.1", "font-family": "sans-serif", "font-size": "12"})
        self.y = MARGIN

    def el(self, tag: str, parent: ET.Element | None = None, **attrs: object) -> ET.Element:
        return ET.SubElement(self.root if parent is None else parent, f"{{{SVG_NS}}}{tag}",
                             {k.replace("_", "-"): str(v) for k, v in attrs.items()})

    def text(self, x: float, y: float, s: str, *, parent: ET.Element | None = None, **attrs: object) -> None:
        self.el("text", parent, x=f"{x:.1f}", y=f"{y:.1f}", **attrs).text = s

    def box(self, *, x: float, y: float, w: float, h: float, fill: str, kind: str, name: str, title: str,
            stroke: str = "#333", stroke_width: float = 1.0) -> ET.Element:
        g = self.el("g", data_kind=kind, data_name=name)
        self.el("title", g).text = title
        self.el("rect", g, x=f"{x:.1f}", y=f"{y:.1f}", width=f"{max(w, 0.5):.1f}", height=f"{h:.1f}",
                fill=fill, stroke=stroke, stroke_width=stroke_width)
        return g


def _array(c: _Canvas, a: ArrayView, *, groups: list[Group], fs_blade: dict[str, str | None]) -> None:
    inner = WIDTH - 2 * MARGIN
    c.text(MARGIN, c.y + 14, f"Array {a['name']}: {size(a['size'])}, free {size(a['free'])}, "
           f"{len(a['devices'])} devices, {len(a['lus'])} LUs", font_weight="bold", font_size="15")
    c.y += 38
    # devices with the LU stripes on them
    total = sum(d["size"] for d in a["devices"]) or 1
    gap = 8
    avail = inner - gap * max(len(a["devices"]) - 1, 0)
    x = float(MARGIN)
    fs_lu = {lu["fileSystem"]: lu["name"] for lu in a["lus"] if lu["fileSystem"]}
    h = 60
    for d in a["devices"]:
        w = avail * d["size"] / total
        c.box(x=x, y=c.y, w=w, h=h, fill=FREE_COLOUR, kind="device", name=str(d["index"]),
              title=f"device {d['index']}: {size(d['size'])}, free {size(d['free'])} {d['path'] or ''}")
        c.text(x + 4, c.y - 4, f"dev {d['index']} ({size(d['size'])})", font_size="11")
        sx = x
        for lu in a["lus"]:
            if d["index"] not in lu["devices"]:
                continue
            unserved = lu["fileSystem"] is not None and not fs_blade.get(lu["fileSystem"])
            extents = [e for e in lu.get("extents") or [] if e["device"] == d["index"]]
            runs = [(x + w * e["offset"] / max(d["size"], 1), e["offset"], e["length"]) for e in extents]
            if not extents:  # placement unknown: the LU's share, packed
                share = lu["size"] / max(len(lu["devices"]), 1)
                runs = [(sx, -1, int(share))]
                sx += w * share / max(d["size"], 1)
            for rx, offset, length in runs:
                rw = w * length / max(d["size"], 1)
                where = f" at offset {offset}" if offset >= 0 else ""
                node = c.box(x=rx, y=c.y, w=rw, h=h, fill=KIND_COLOURS.get(lu["kind"], "#b0b0b0"), kind="lu-extent",
                             name=lu["name"], title=f"LU {lu['name']} ({lu['kind']}): {size(length)} on device {d['index']}"
                                                    + where + (" - NOT SERVED" if unserved else ""),
                             stroke=COLOURS["dead"] if unserved else "#fff", stroke_width=3 if unserved else 1)
                if offset >= 0:
                    node.set("data-device", str(d["index"]))
                    node.set("data-offset", str(offset))
                    node.set("data-length", str(length))
                if rw > 40:
                    c.text(rx + 3, c.y + h / 2 + 4, lu["name"], parent=node, font_size="10", fill="#fff")
        x += w + gap
    c.y += h + 16
    # LU legend: one labelled chip per LU, so every LU is named even when its stripe is thin
    x = float(MARGIN)
    for lu in a["lus"]:
        label = f"{lu['name']} {size(lu['size'])}"
        w = 14 + 7 * len(label)
        if x + w > WIDTH - MARGIN:
            x = float(MARGIN)
            c.y += 20
        res = lu["reservation"]
        node = c.box(x=x, y=c.y, w=12, h=12, fill=KIND_COLOURS.get(lu["kind"], "#b0b0b0"), kind="lu", name=lu["name"],
                  title=f"LU {lu['name']} ({lu['kind']}), {size(lu['size'])}, devices {lu['devices']}"
                        + (f", reserved by {res['holder']} epoch {res['epoch']}" if res else ""))
        c.text(x + 16, c.y + 10, label, parent=node, font_size="11")
        x += w + 10
    c.y += 30
    # processor-info portions and backup areas
    if a["areas"]:
        c.text(MARGIN, c.y, "Processor information: portions (procinfo LU) and backup areas (backup LU)", font_weight="bold")
        c.y += 8
        active = {g["name"]: (g["activeArea"] or "portion") for g in groups}
        for role, label in (("portion", "procinfo"), ("backup", "backup")):
            areas = [ar for ar in a["areas"] if ar["role"] == role]
            n = max(len(areas), 1)
            w = (inner - 70) / n
            c.text(MARGIN, c.y + 22, label, font_size="11")
            for i, ar in enumerate(areas):
                in_use = (active.get(ar["group"]) == "backup") == (role == "backup")
                c.box(x=MARGIN + 70 + i * w, y=c.y + 8, w=w - 4, h=22,
                      fill=KIND_COLOURS["processorInfo" if role == "portion" else "backup"],
                      kind="area", name=f"{ar['lu']}[{ar['index']}]",
                      title=f"{role} {ar['index']} of {ar['lu']} for group {ar['group']} at offset {ar['offset']}"
                            + (" (in use)" if in_use else ""),
                      stroke="#000" if in_use else "#fff", stroke_width=3 if in_use else 1)
                c.text(MARGIN + 74 + i * w, c.y + 23, f"{ar['group']}" + (" *" if in_use else ""), fill="#fff", font_size="11")
            c.y += 28
        c.y += 16
    # cluster groups and blades
    for g in groups:
        if g["array"] != a["name"]:
            continue
        c.text(MARGIN, c.y + 12, f"Cluster group {g['name']} (portion {g['portion']}, active area {g['activeArea'] or '-'})",
               font_weight="bold")
        c.y += 20
        n = max(len(g["blades"]), 1)
        w = min(220.0, (inner - 10 * (n - 1)) / n)
        bh = 44 + 14 * max((len(b["fileSystems"]) for b in g["blades"]), default=0)
        for i, b in enumerate(g["blades"]):
            bx = MARGIN + i * (w + 10)
            gb = c.box(x=bx, y=c.y, w=w, h=bh, fill=COLOURS.get(b["state"], "#8a8f98"), kind="blade", name=b["name"],
                       title=f"blade {b['name']}: {b['state']}" + (f" ({b['reason']})" if b["reason"] else "")
                             + f", software {b['softwareVersion'] or '-'}")
            c.text(bx + 6, c.y + 16, b["name"], parent=gb, fill="#fff", font_weight="bold")
            c.text(bx + 6, c.y + 31, f"{b['state']} · sw {b['softwareVersion'] or '-'}", parent=gb, fill="#fff", font_size="11")
            for j, fs in enumerate(b["fileSystems"]):
                fy = c.y + 46 + 14 * j
                gf = c.el("g", gb, data_kind="served", data_name=fs)
                c.text(bx + 10, fy, f"▸ {fs}" + (f" (LU {fs_lu[fs]})" if fs in fs_lu else ""), parent=gf, fill="#fff", font_size="11")
        c.y += bh + 10
        lost = [fs for fs in g["fileSystems"] if not fs_blade.get(fs)]
        if lost:
            c.text(MARGIN, c.y + 10, f"not served: {', '.join(lost)}", fill=COLOURS["dead"], font_weight="bold")
            c.y += 18
        c.y += 10


def build(snap: Snapshot) -> ET.ElementTree[ET.Element]:
    """The SVG document for ``snap``."""
    c = _Canvas()
    target = snap["target"]
    where = target.get("dataDir") or f"namespace {target.get('namespace')}"
    c.text(MARGIN, c.y + 6, f"nasblade map · {where} · {snap['time']}", fill="#555", font_size="11")
    c.y += 20
    states = {b["name"]: b["state"] for g in snap["groups"] for b in g["blades"]}
    # a file system counts as served when its owner is up (ok or merely suspect)
    fs_blade = {f["name"]: f["blade"] if states.get(f["blade"] or "") in ("ok", "suspect") else None
                for f in snap["fileSystems"]}
    for a in snap["arrays"]:
        _array(c, a, groups=snap["groups"], fs_blade=fs_blade)
    orphans = [g for g in snap["groups"] if g["array"] not in {a["name"] for a in snap["arrays"]}]
    if orphans:
        _array(c, {"name": "(unknown array)", "ready": None, "size": None, "free": None, "devices": [], "lus": [],
                   "areas": [], "cache": {}, "load": {}, "software": {}, "controller": None}, groups=orphans, fs_blade=fs_blade)
    # legend
    x = float(MARGIN)
    for label, colour in [*COLOURS.items(), *KIND_COLOURS.items()]:
        c.el("rect", x=f"{x:.1f}", y=f"{c.y:.1f}", width="10", height="10", fill=colour)
        c.text(x + 14, c.y + 9, label, font_size="10")
        x += 24 + 6 * len(label)
    c.y += 24
    c.root.set("width", str(WIDTH))
    c.root.set("height", str(int(c.y)))
    c.root.set("viewBox", f"0 0 {WIDTH} {int(c.y)}")
    c.root.insert(0, ET.Element(f"{{{SVG_NS}}}rect", {"width": "100%", "height": "100%", "fill": "#ffffff"}))
    return ET.ElementTree(c.root)


def write(snap: Snapshot, path: Path) -> None:
    tree = build(snap)
    ET.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)


def png_converter() -> list[str] | None:
    """The command that turns ``SVG PNG`` (appended) into a PNG, or None when none is installed."""
    if shutil.which("rsvg-convert"):
        return ["rsvg-convert", "--format=png", "--output"]
    if shutil.which("magick"):
        return ["magick"]
    return None


def to_png(svg: Path, png: Path) -> None:
    """Convert; raises ``RuntimeError`` with the converter's message on failure."""
    conv = png_converter()
    if conv is None:
        raise RuntimeError("no SVG converter installed (install librsvg2-bin for rsvg-convert)")
    argv = [*conv, str(png), str(svg)] if conv[0] == "rsvg-convert" else [*conv, str(svg), str(png)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{conv[0]} failed: {out.stderr.strip()}")
