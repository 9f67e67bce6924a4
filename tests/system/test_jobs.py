"""Jobs are JSON, never pickle; RQ stays behind routinely/storage/jobs.py; the shared package stands alone."""
from __future__ import annotations

import pickle
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from rq.job import Job

from routinely.storage import jobs
from tests.support import ROOT_DIR


ROOT = ROOT_DIR


class Planted:
    """Unpickling this runs a command: what a pickled job in the queue could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (subprocess.call, (["touch", str(self.marker)],))


def test_a_worker_refuses_a_pickled_job_without_unpickling_it(conn, settings, tmp_path):
    marker = tmp_path / "unpickled"
    pickle.loads(pickle.dumps(Planted(marker)))  # the trap works when unpickled...
    assert marker.exists()
    marker.unlink()
    # ...so write a job whose data is that pickle, the way RQ's default serializer would
    job = Job.create("workers.run.run_session", id="session_planted", connection=conn, origin=settings.queue_name)
    job.save()
    conn.hset(job.key, mapping={"data": zlib.compress(pickle.dumps((Planted(marker), None, (), {}))), "status": "queued"})
    conn.rpush(jobs.queue_key(settings.queue_name), job.id)
    conn.sadd(jobs.QUEUES_KEY, jobs.queue_key(settings.queue_name))
    jobs.worker(conn, settings.queue_name).work(burst=True, with_scheduler=False, logging_level="ERROR")
    assert not marker.exists()  # never unpickled
    assert Job.fetch("session_planted", connection=conn, serializer=jobs.SERIALIZER).get_status() == "failed"
    assert conn.llen(jobs.queue_key(settings.queue_name)) == 0


def test_the_job_template_is_json(conn):
    import json

    data = json.loads(zlib.decompress(jobs.JobTemplate.build(conn, "routinely").data))
    assert data == ["workers.run.run_session", None, [], {}]


@pytest.mark.parametrize("floor, above", [("routinely", ("app", "workers", "cli")), ("filters", ("routinely", "app", "workers", "cli")),
                                          ("app", ("workers", "cli")), ("workers", ("app", "cli"))])
def test_no_import_runs_up_a_floor(floor, above):
    """Importing every module of a floor loads nothing from the floors above it (`cli/` is the top)."""
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in (ROOT / floor).rglob("*.py") if p.stem != "__main__")
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {above!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_only_the_jobs_module_imports_rq():
    users = [str(p.relative_to(ROOT)) for d in ("routinely", "app", "workers") for p in (ROOT / d).rglob("*.py")
             if any(line.startswith(("import rq", "from rq")) or line.strip().startswith(("from rq", "import rq"))
                    for line in p.read_text().splitlines())]
    assert users == ["routinely/storage/jobs.py"]
