"""The blade's ``GET /v1/metrics`` (``nasblade.blockproc.metrics``): a block processor and its
``blade-file-processor`` on a real controller, fs1 written and read by libnfs's command-line
clients; the scrape shows the calls those clients caused (by program and procedure, with their
latency histogram), the file system served, the heartbeat, a takeover, and it needs the token.
"""

from __future__ import annotations

import http.client
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from conftest import BLADE_TOKEN, BladeProc
from nasblade.bladeapi.client import BladeClient
from nasblade.blockproc import metrics as bmetrics
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.component

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(api: str, token: str | None = BLADE_TOKEN) -> tuple[int, str, str]:
    """``GET /v1/metrics``: status, content type, body."""
    u = urlparse(api)
    conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=30)
    conn.request("GET", "/v1/metrics", headers={"Authorization": f"Bearer {token}"} if token else {})
    resp = conn.getresponse()
    body = resp.read().decode()
    conn.close()
    return resp.status, resp.getheader("Content-Type") or "", body


def samples(api: str) -> Samples:
    status, ctype, body = scrape(api)
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4"), body
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


def value(got: Samples, name: str, **labels: str) -> float:
    return got.get((name, frozenset({"group": "g1", "blade": "b0", **labels}.items())), 0.0)


def calls(got: Samples, program: str, procedure: str) -> float:
    return value(got, "nasblade_blade_nfs_calls_total", fs="fs1", program=program, procedure=procedure)


def nfs_url(spec: dict[str, Any], name: str) -> str:
    return f"nfs://{spec['address']}/fs1/{name}?version=3&nfsport={spec['nfsPort']}&mountport={spec['mountPort']}"


def nfs(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=120)


def test_blade_metrics_after_nfs_operations(
    tmp_path: Path, fs_spec: dict[str, Any],
    start_bp: Callable[..., BladeProc], start_fp: Callable[..., subprocess.Popen[bytes]],
) -> None:
    bp = start_bp(blade="b0", slot=0, own=("fs1",),
                  extra=("--fs-spec", json.dumps(fs_spec), "--fp-unix", str(tmp_path / "b0" / "fp.sock")))
    start_fp(bp, "b0", fs_spec)
    assert scrape(bp.api, token=None)[0] == 401
    assert scrape(bp.api, token="wrong")[0] == 401

    before = samples(bp.api)
    assert value(before, "nasblade_blade_file_processor_up") == 1
    assert value(before, "nasblade_blade_filesystem_served", fs="fs1") == 1
    assert value(before, "nasblade_blade_takeovers_total", fs="fs1") == 0
    assert 0 <= value(before, "nasblade_blade_heartbeat_stored_age_seconds") < 5
    assert value(before, "nasblade_blade_procinfo_area_active", area="primary") == 1

    content = bytes(range(256)) * (3 << 12)  # 3 MiB: several WRITEs and READs at libnfs's 1 MiB
    (tmp_path / "f.bin").write_bytes(content)
    nfs("nfs-cp", str(tmp_path / "f.bin"), nfs_url(fs_spec, "f.bin"))
    nfs("nfs-cp", nfs_url(fs_spec, "f.bin"), str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == content
    nfs("nfs-ls", nfs_url(fs_spec, "").rstrip("/"))
    after = samples(bp.api)

    def grew(program: str, procedure: str) -> float:
        return calls(after, program, procedure) - calls(before, program, procedure)

    assert grew("mount", "MNT") >= 3  # one mount per client run
    # the families are the ones the module declares, with their types (the chart's alerts are
    # checked against them), plus the cluster member's
    types = dict(line.split()[2:4] for line in scrape(bp.api)[2].splitlines() if line.startswith("# TYPE "))
    types = {n.removesuffix("_total") if k == "counter" else n: k for n, k in types.items()}
    assert {k: v for k, v in types.items() if k in bmetrics.FAMILIES} == bmetrics.FAMILIES
    # capacity, as FSSTAT answers it: the 3 MiB file took space, and one more file is counted
    size = value(after, "nasblade_blade_filesystem_size_bytes", fs="fs1")
    assert size > 0 and value(before, "nasblade_blade_filesystem_size_bytes", fs="fs1") == size
    used = size - value(after, "nasblade_blade_filesystem_free_bytes", fs="fs1")
    assert used - (size - value(before, "nasblade_blade_filesystem_free_bytes", fs="fs1")) >= len(content)
    assert value(after, "nasblade_blade_filesystem_files", fs="fs1") == \
        value(before, "nasblade_blade_filesystem_files", fs="fs1") + 1
    assert grew("nfs", "WRITE") >= 3 and grew("nfs", "READ") >= 3
    assert grew("nfs", "CREATE") + grew("nfs", "SETATTR") >= 1
    assert grew("nfs", "READDIRPLUS") + grew("nfs", "READDIR") >= 1
    assert grew("nfs", "REMOVE") == 0 and grew("nfs", "RENAME") == 0  # counted are only those made
    # the latency histogram counts the same calls, cumulative buckets up to +Inf
    series = [dict(k[1]) for k in after if k[0] == "nasblade_blade_nfs_calls_total"]
    assert {s["program"] for s in series} >= {"nfs", "mount"}
    for s in series:
        labels = {k: v for k, v in s.items() if k not in ("group", "blade")}
        n = value(after, "nasblade_blade_nfs_call_seconds_count", **labels)
        assert n == value(after, "nasblade_blade_nfs_calls_total", **labels) > 0
        assert value(after, "nasblade_blade_nfs_call_seconds_bucket", le="+Inf", **labels) == n
        assert value(after, "nasblade_blade_nfs_call_seconds_bucket", le="0.0001", **labels) <= n
        assert value(after, "nasblade_blade_nfs_call_seconds_sum", **labels) > 0

    # a release and a takeover (new epoch) on this blade: counted; fs1 served again
    api = BladeClient(bp.api, BLADE_TOKEN, timeout=180)
    api.request("POST", "/v1/filesystems/fs1/release")
    assert value(samples(bp.api), "nasblade_blade_takeovers_total", fs="fs1") == 0
    api.request("POST", "/v1/filesystems/fs1/takeover")
    api.request("POST", "/v1/filesystems/fs1/takeover")  # held already: not a takeover
    moved = samples(bp.api)
    assert value(moved, "nasblade_blade_takeovers_total", fs="fs1") == 1
    nfs("nfs-ls", nfs_url(fs_spec, "").rstrip("/"))
    assert calls(samples(bp.api), "mount", "MNT") >= 1


def test_the_metrics_token_reads_the_blades_metrics_and_nothing_else(
    tmp_path: Path, start_bp: Callable[..., BladeProc],
) -> None:
    """A scraper's read-only token (``--metrics-token-file``): the scrape, 403 for every other
    route of the blade API (status, takeover), 401 for a wrong token."""
    (tmp_path / "metrics-token").write_text("scraper-token\n")
    bp = start_bp(blade="b0", slot=0, own=(), extra=("--metrics-token-file", str(tmp_path / "metrics-token")))
    status, _, body = scrape(bp.api, token="scraper-token")
    assert status == 200 and "nasblade_blade_" in body
    u = urlparse(bp.api)
    for method, path in (("GET", "/v1/status"), ("POST", "/v1/filesystems/fs1/takeover"), ("GET", "/v1/cluster")):
        conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=30)
        conn.request(method, path, headers={"Authorization": "Bearer scraper-token"})
        resp = conn.getresponse()
        reply = json.loads(resp.read())
        conn.close()
        assert resp.status == 403 and reply == {"error": "the metrics token reads GET /v1/metrics only"}, (path, reply)
    assert scrape(bp.api, token="scraper-toke")[0] == 401
    assert scrape(bp.api)[0] == 200  # the blade token still reads them


def test_a_blade_api_keyed_by_a_digest_takes_only_the_token_behind_it(
    tmp_path: Path, start_bp: Callable[..., BladeProc],
) -> None:
    """``--api-token-sha256-file`` (how the operator runs blades): the API takes the token whose
    SHA-256 the file holds -- the operator's, which the blade never sees -- and refuses the
    blade's own token and the digest itself (401)."""
    import hashlib

    (tmp_path / "op.sha256").write_text(hashlib.sha256(b"operator-secret").hexdigest() + "\n")
    bp = start_bp(blade="b0", slot=0, own=(), extra=("--api-token-sha256-file", str(tmp_path / "op.sha256")))
    u = urlparse(bp.api)

    def status(token: str) -> int:
        conn = http.client.HTTPConnection(u.hostname or "", u.port, timeout=30)
        conn.request("GET", "/v1/status", headers={"Authorization": f"Bearer {token}"})
        code = conn.getresponse().status
        conn.close()
        return code

    assert status("operator-secret") == 200
    assert status(BLADE_TOKEN) == 401  # what --api-token-file held: no longer accepted
    assert status(hashlib.sha256(b"operator-secret").hexdigest()) == 401
    assert status("operator-secreT") == 401
