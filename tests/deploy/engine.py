"""The Docker engine, the local base image and the image under test, as the deploy test needs them.

Follows ../shared/DOCKER_NOTES.md: Debian's engine on ``vfs`` without a bridge (every container on
the host's loopback), a Python 3.11 base made with debootstrap because no registry is reachable.
Whatever this module starts or builds it also stops or removes, except the base image (reused).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support.wait import wait_until

BASE_IMAGE = "local/python-base:3.11"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
DOCKERD_ARGS = ["--storage-driver=vfs", "--bridge=none", "--iptables=false", "--ip-masq=false"]


def run(cmd: Sequence[str], *, timeout: float = 600, check: bool = True, **kw) -> str:
    """``cmd``'s stdout; on failure an error carrying the tail of its output."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}"
                           f"\n{proc.stderr[-3000:]}")  # fmt: skip
    return proc.stdout


def docker(*args: str, timeout: float = 600, check: bool = True) -> str:
    return run(["docker", *args], timeout=timeout, check=check)


def engine_answers() -> bool:
    return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0


def compose_command() -> list[str]:
    """``docker compose`` (v2) where present, else Debian's ``docker-compose`` (1.29)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"]


def install_engine() -> None:
    """Debian's docker.io, docker-compose and debootstrap, when one is missing (root only)."""
    if all(shutil.which(tool) for tool in ("dockerd", "docker-compose", "debootstrap")):
        return
    if os.geteuid() != 0:
        raise RuntimeError("the Docker engine is missing and only root can install it")
    packages = ["docker.io", "docker-compose", "debootstrap"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if subprocess.run(install, capture_output=True, env=env, timeout=600).returncode != 0:
        run(["apt-get", "update"], env=env)
        run(install, env=env)


@contextlib.contextmanager
def docker_engine(log_path: Path) -> Iterator[bool]:
    """An answering engine; yields whether this call started it (then it is stopped after)."""
    install_engine()
    if engine_answers():
        yield False
        return
    log = open(log_path, "ab")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        ["dockerd", *DOCKERD_ARGS], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        try:
            wait_until(
                engine_answers,
                60,
                "dockerd to answer",
                interval=0.5,
                alive=lambda: proc.poll() is None,
            )
        except AssertionError as exc:
            raise RuntimeError(f"dockerd did not come up ({exc}); see {log_path}") from None
        yield True
    finally:
        proc.terminate()  # by its pid: only the engine this test started
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def image_exists(tag: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True).returncode == 0


def ensure_base_image(workdir: Path) -> bool:
    """The debootstrapped Debian bookworm Python 3.11 base; returns whether it was built now."""
    if image_exists(BASE_IMAGE):
        return False
    rootfs = workdir / "rootfs"
    try:
        run(
            ["debootstrap", "--variant=minbase",
             "--include=python3,python3-venv,python3-pip,ca-certificates", "bookworm", str(rootfs)],
            timeout=900,
        )  # fmt: skip
        # This machine's trust store: pip in the build reaches PyPI through whatever it trusts.
        shutil.copyfile(CA_BUNDLE, rootfs / CA_BUNDLE.lstrip("/"))
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        run(
            ["docker", "import", "--change", f"ENV PIP_CERT={CA_BUNDLE}",
             "--change", f"ENV SSL_CERT_FILE={CA_BUNDLE}", "-", BASE_IMAGE],
            stdin=tar.stdout,
        )  # fmt: skip
        tar.wait()
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return True


def build_image(repo: Path, tag: str) -> None:
    docker(
        "build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
        "-f", str(repo / "deploy" / "Dockerfile"), "-t", tag, str(repo),
        timeout=1200,
    )  # fmt: skip


def remove_built(tag: str) -> None:
    """The image under test and the build cache go; the base image stays for the next run."""
    docker("rmi", "-f", tag, check=False)
    docker("image", "prune", "-f", check=False)
    docker("builder", "prune", "-f", check=False)
