"""deploy/: the scripts, units, compose file and manifests operators install from.

Each check runs where its tool is installed and is skipped, saying which tool is missing,
where it is not. No image is built here (deploy/check-image does that, by hand).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tests.support import ROOT_DIR


ROOT = ROOT_DIR
DEPLOY = ROOT / "deploy"
SCRIPTS = ["up", "system-packages", "entrypoint", "check-image"]
UNITS = ["routinely-web.service", "routinely-worker@.service", "routinely-scheduler.service"]
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))


def tool(name: str) -> str:
    """The tool's path, found on PATH or beside this interpreter; else skip, saying so."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        print(f"test_deploy: {name} is not installed; skipped")
        pytest.skip(f"{name} is not installed")
    return found


def run(*argv: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, **(env or {})}, **kw)


# -- the scripts

@pytest.mark.parametrize("script", SCRIPTS + ["../.ci/run"])
def test_script_parses(script):
    done = run("bash", "-n", str(DEPLOY / script))
    assert done.returncode == 0, done.stderr


def test_system_packages_finds_nothing_missing_here():
    """.ci/run installed them: the dry mode must agree, or the list and CI have drifted."""
    tool("dpkg-query")
    done = run("bash", "deploy/system-packages", "--test", "--check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nothing missing" in done.stdout


def test_system_packages_lists_what_the_service_needs():
    runtime = run("bash", "deploy/system-packages", "--list").stdout.split()
    assert {"redis-server", "git", "bubblewrap", "python3", "python3-venv"} <= set(runtime)
    assert "chromium" not in runtime
    assert "chromium" in run("bash", "deploy/system-packages", "--list", "--test").stdout.split()
    assert "redis-server" not in run("bash", "deploy/system-packages", "--list", "--no-redis").stdout.split()


def test_system_packages_not_root_prints_one_sudo_line(tmp_path):
    """Not root, with packages missing: the one line to run, exit 1, nothing installed."""
    fake = tmp_path / "bin"
    fake.mkdir()
    # dpkg-query says chromium and git are missing; id says uid 1000; apt-get must not run
    (fake / "dpkg-query").write_text('#!/bin/sh\nfor a; do p=$a; done\n'
                                     'case $p in chromium|git) exit 1;; esac\nprintf installed\n')
    (fake / "id").write_text("#!/bin/sh\necho 1000\n")
    (fake / "apt-get").write_text("#!/bin/sh\necho apt-get ran >&2\nexit 99\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    done = run("bash", "deploy/system-packages", "--test", env={"PATH": f"{fake}:{os.environ['PATH']}"})
    assert done.returncode == 1
    assert done.stdout.strip().splitlines() == ["sudo apt-get install -y git chromium"]
    assert "apt-get ran" not in done.stderr


def test_ci_and_image_install_through_the_one_list():
    ci = (ROOT / ".ci" / "run").read_text()
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "deploy/system-packages --test" in ci
    assert "deploy/system-packages" in dockerfile and "deploy/system-packages" in (DEPLOY / "up").read_text()
    pinned = re.search(r"CLAUDE_CODE_VERSION=([\d.]+)", ci).group(1)
    assert f"ARG CLAUDE_CODE_VERSION={pinned}" in dockerfile, "the image's Claude Code CLI is not the one CI tests"


def test_entrypoint_reads_the_admin_token_file(tmp_path):
    secret = tmp_path / "admin_token"
    secret.write_text("t" * 40 + "\n")
    done = run(str(DEPLOY / "entrypoint"), "sh", "-c", 'echo "$ROUTINELY_ADMIN_TOKEN|${ROUTINELY_ADMIN_TOKEN_FILE-unset}"',
               env={"ROUTINELY_ADMIN_TOKEN_FILE": str(secret), "ROUTINELY_ADMIN_TOKEN": ""})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "t" * 40 + "|unset"


def test_entrypoint_passes_routinely_commands():
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = run(str(DEPLOY / "entrypoint"), "--version", env=env)
    assert done.returncode == 0 and done.stdout.startswith("routinely "), done.stdout + done.stderr


def test_healthcheck_says_unhealthy_in_one_line():
    done = run(sys.executable, str(DEPLOY / "healthcheck"), "worker", env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert done.returncode == 1
    assert done.stderr.startswith("healthcheck worker: ConnectionError") and done.stderr.count("\n") == 1


def test_healthcheck_passes_against_redis(redis_server):
    done = run(sys.executable, str(DEPLOY / "healthcheck"), "scheduler", env={"REDIS_URL": redis_server.url})
    assert done.returncode == 0, done.stderr


# -- systemd

def test_systemd_units_verify(tmp_path):
    """systemd-analyze verify, with the units pointed at this checkout instead of /opt/routinely."""
    analyze = tool("systemd-analyze")
    if not (ROOT / ".venv" / "bin" / "routinely").exists():
        pytest.skip("no .venv/bin/routinely in this checkout for the units' ExecStart")
    for unit in UNITS:
        text = (DEPLOY / "systemd" / unit).read_text().replace("/opt/routinely", str(ROOT))
        (tmp_path / unit).write_text(text)
    names = [str(tmp_path / u.replace("@.", "@1.")) for u in UNITS]
    done = subprocess.run([analyze, "verify", *names], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    # verify prints a line for every directive it cannot parse, and still exits 0
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr


def test_worker_unit_keeps_what_the_sandbox_needs():
    worker = (DEPLOY / "systemd" / "routinely-worker@.service").read_text()
    directives = {line.split("=", 1)[0] for line in worker.splitlines() if re.match(r"^[A-Z]\w*=", line)}
    for breaking in ("PrivateUsers", "DynamicUser", "User", "RestrictNamespaces", "SystemCallFilter",
                     "ProtectKernelTunables", "ProtectControlGroups", "ProtectProc", "ProcSubset"):
        assert breaking not in directives, f"{breaking}= breaks the session sandbox (see the unit's comment)"
    assert "KillMode=mixed" in worker and "Delegate=yes" in worker


# -- compose

def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yml").read_text())


def test_compose_shape():
    services = _compose()["services"]
    assert set(services) == {"web", "worker", "scheduler", "redis"}
    assert all("healthcheck" in s for s in services.values())
    assert "--appendonly" in services["redis"]["command"]
    assert {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"} <= set(services["worker"]["security_opt"])
    assert services["web"]["environment"]["ROUTINELY_ADMIN_TOKEN_FILE"] == "/run/secrets/admin_token"


def test_compose_matches_the_compose_spec():
    check = tool("check-jsonschema")
    done = run(check, "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_config_resolves():
    if shutil.which("docker") and run("docker", "compose", "version").returncode == 0:
        compose = ["docker", "compose"]
    else:
        compose = [tool("podman-compose")]
    done = run(*compose, "-f", str(DEPLOY / "compose.yml"), "config")
    assert done.returncode == 0, done.stdout + done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert resolved["services"]["worker"]["command"] == ["worker"]
    assert resolved["services"]["redis"]["volumes"]


# -- Kubernetes

@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_parses(manifest):
    documents = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    assert documents and all({"apiVersion", "kind", "metadata"} <= set(d) for d in documents)


def test_manifests_match_the_kubernetes_schemas():
    validate = tool("kubernetes-validate")
    done = run(validate, "--strict", *map(str, MANIFESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_only_the_worker_pod_is_privileged():
    for manifest in MANIFESTS:
        for doc in yaml.safe_load_all(manifest.read_text()):
            if not doc or doc["kind"] != "Deployment":
                continue
            for container in doc["spec"]["template"]["spec"]["containers"]:
                privileged = container.get("securityContext", {}).get("privileged", False)
                assert privileged == (container["args"] == ["worker"]), manifest.name


def test_entrypoint_web_binds_once(tmp_path):
    """`web` listens on 0.0.0.0:$PORT unless given its own --bind (the systemd unit's)."""
    fake = tmp_path / "gunicorn"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}", "PORT": "8123"}
    default = run(str(DEPLOY / "entrypoint"), "web", env=env).stdout.split()
    own = run(str(DEPLOY / "entrypoint"), "web", "--bind", "127.0.0.1:9", env=env).stdout.split()
    assert default.count("--bind") == 1 and "0.0.0.0:8123" in default
    assert own.count("--bind") == 1 and "127.0.0.1:9" in own and own[-1] == "app:create_app()"
