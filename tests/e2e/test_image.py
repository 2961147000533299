"""The nasblade image itself (``make image``), run with docker and no network: one image for
every role, a non-root user, and the blade software bundle that seeds the program LU."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from e2elib import CLIENT_IMAGE, IMAGE, VERSION

pytestmark = pytest.mark.e2e

ROLES = ["operator", "controller", "block-processor", "file-processor", "boot",
         "blade-file-processor", "software", "mkfs", "fsck", "up"]


def docker(*args: str, entrypoint: str | None = None, image: str = IMAGE) -> subprocess.CompletedProcess[str]:
    docker_bin = shutil.which("docker")
    assert docker_bin, "docker is needed to build and inspect the images (make image)"
    argv = [docker_bin, "run", "--rm", "--network", "none"]
    if entrypoint:
        argv += ["--entrypoint", entrypoint]
    return subprocess.run([*argv, image, *args], capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    docker_bin = shutil.which("docker") or "docker"
    for tag in (IMAGE, CLIENT_IMAGE):
        r = subprocess.run([docker_bin, "image", "inspect", tag], capture_output=True, check=False)
        assert r.returncode == 0, f"{tag} is not built: run `make images`"


def test_every_role_from_one_image() -> None:
    """The role is the command: each role's parser loads from the image (its imports and
    dependencies are there) without any network."""
    script = ("import importlib, sys; from nasblade import cli; "
              "missing = [n for n in sys.argv[1:] if n not in cli.COMMANDS]; "
              "assert not missing, missing; "
              "[importlib.import_module(cli.COMMANDS[n].module) for n in sys.argv[1:]]; "
              "print('ok')")
    r = docker("-c", script, *ROLES, entrypoint="python3")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    r = docker("operator", "--help")
    assert r.returncode == 0 and "--peering" in r.stdout, r.stderr
    r = docker("controller", "--help")
    assert r.returncode == 0 and "--nbd-listen" in r.stdout, r.stderr


def test_runs_as_non_root() -> None:
    r = docker("-c", "id -u; id -g", entrypoint="sh")
    assert r.stdout.split() == ["10001", "10001"], r.stdout + r.stderr
    inspect = subprocess.run([shutil.which("docker") or "docker", "image", "inspect", IMAGE],
                             capture_output=True, text=True, check=True)
    config = json.loads(inspect.stdout)[0]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["nasblade"]


def test_software_bundle_is_built_in() -> None:
    """The bundle the program LU is seeded with is in the image, and it is exactly what
    ``nasblade software build`` makes from the image's code (reproducible bundles)."""
    path = f"/opt/nasblade/software/blade-{VERSION}.pyz"
    script = (f"set -e; test \"$NASBLADE_SOFTWARE_BUNDLE\" = {path}; "
              f"nasblade software build --version {VERSION} --output /tmp/fresh.pyz; "
              f"sha256sum {path} /tmp/fresh.pyz; "
              f"python3 {path} software running")
    r = docker("-c", script, entrypoint="sh")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[0] == lines[1].split()[0]
    assert json.loads(lines[2])["version"] == VERSION


def test_client_image_has_libnfs_tools() -> None:
    r = docker("-c", "command -v nfs-cp nfs-cat nfs-ls && python3 -c 'import libnfs' && id -u",
               entrypoint="sh", image=CLIENT_IMAGE)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == "10002"
