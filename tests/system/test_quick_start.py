"""The README's quick start, run as written: its shell blocks are read from README.md (never
copied here), only the port is changed to a free one, in a fresh folder with a fresh data dir."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from pathlib import Path


from tests.support import free_port, needs_root_sandbox, reachable_folder, wait_for
from tests.support import ROOT_DIR


ROOT = ROOT_DIR
README = ROOT / "README.md"


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def blocks(title: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", section(title), re.M | re.S)


def the_up_process(shell: int) -> list[int]:
    """`routinely up`'s pid: the shell itself when bash ran its last command in place, else its child."""
    try:
        if b"routinely" in Path(f"/proc/{shell}/cmdline").read_bytes():
            return [shell]
        return [int(c) for c in Path(f"/proc/{shell}/task/{shell}/children").read_text().split()]
    except OSError:
        return []


def test_the_readme_routine_is_the_one_init_writes(tmp_path):
    """One source: the README shows `routinely init`'s file (less its schema line)."""
    subprocess.run([str(ROOT / ".venv/bin/routinely"), "init", str(tmp_path / "r.yml")], check=True,
                   capture_output=True, env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    written = (tmp_path / "r.yml").read_text()
    assert written.startswith("# yaml-language-server: $schema=file://")
    assert blocks("A routine", "yaml") == [written.split("\n", 1)[1]]


@needs_root_sandbox
def test_the_quick_start_works_as_written():
    first, second = blocks("Quick start", "sh")
    port = free_port()
    first = first.replace("routinely up", f"routinely up --port {port}")
    second = second.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    with reachable_folder("rly-quick-") as work:
        (work / ".venv").symlink_to(ROOT / ".venv")
        env = {"PATH": os.environ["PATH"], "HOME": str(work), "ROUTINELY_DATA_DIR": str(work / "data"),
               "WEB_CONCURRENCY": "1"}
        up = subprocess.Popen(["bash", "-e", "-c", first], cwd=work, env=env, stderr=subprocess.PIPE, text=True)
        said: list[str] = []
        reader = threading.Thread(target=lambda: said.extend(iter(up.stderr.readline, "")), daemon=True)
        reader.start()
        try:
            assert wait_for(lambda: any("sign in at" in line for line in said) or up.poll() is not None, 120), said
            assert up.poll() is None, "".join(said)
            done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", second], cwd=work, env=env,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr + "".join(said)
            assert '"type":"routine_fire"' in done.stdout.replace(" ", ""), done.stdout

            def listing() -> list[dict]:
                out = subprocess.run([str(work / ".venv/bin/routinely"), "sessions", "--json"], cwd=work, env=env,
                                     capture_output=True, text=True, timeout=30)
                return json.loads(out.stdout) if out.returncode == 0 else []

            finished = ("succeeded", "failed", "cancelled", "timed_out")
            assert wait_for(lambda: len(rows := listing()) == 3 and all(r["status"] in finished for r in rows), 180,
                            every=0.5), listing()
            rows = listing()
            assert sorted(r["trigger"]["kind"] for r in rows) == ["api", "github", "manual"], rows
            assert all(r["status"] == "succeeded" for r in rows), rows
        finally:
            for pid in the_up_process(up.pid):  # one SIGTERM, as a person's Ctrl-C
                os.kill(pid, signal.SIGTERM)
            up.wait(60)
            reader.join(5)
