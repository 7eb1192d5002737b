"""A full disk under the run directory: one clear line, exit code 4, no half-written report.

Before: raw OSError tracebacks from loadgen and rehearse, exit 1 (the code of a failed SLO),
empty report.json / report.html left behind, and no verdict. Each test runs the command in its
own mount namespace over a tiny tmpfs (`unshare -rm`): a real ENOSPC, nothing of the machine's.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pipeline_fixtures import Pipeline

from flashsale.ops.processes import flashsale_argv

pytestmark = pytest.mark.timeout(240)

SCENARIO = """
name = "full-disk"
[sale]
stock = 20
[pipeline]
workers = 1
worker_concurrency = 8
[stripe_sim]
rate_limit = "off"
[loadgen]
customers = 30
rate = "15/s"
timeout = "30s"
max_lag = "2s"
max_cpu = 100
"""


@pytest.fixture(scope="module")
def pipeline(pipeline_factory: Callable[..., Pipeline]) -> Pipeline:
    return pipeline_factory()


def mount_namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


@pytest.fixture(scope="module", autouse=True)
def need_mount_namespaces() -> None:
    if not mount_namespaces_work():
        if os.environ.get("CI"):
            pytest.fail("CI must allow `unshare -rm` + a tmpfs mount (the full-disk tests)")
        pytest.skip("no user + mount namespaces here (unshare -rm)")


def on_tiny_disk(
    mount: Path, size: str, script: str, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """Run a shell script with a `size` tmpfs mounted on `mount`, in a namespace of its own."""
    mount.mkdir(parents=True, exist_ok=True)
    body = f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(mount))} && {script}"
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", body],
        capture_output=True,
        text=True,
        timeout=200,
        cwd=tmp_path,
    )


def leftovers(listing: str) -> list[str]:
    return sorted(line for line in listing.split() if line)


def test_rehearse_refuses_a_run_directory_without_room_before_starting_anything(
    tmp_path: Path,
) -> None:
    mount = tmp_path / "disk"
    argv = shlex.join(flashsale_argv("rehearse", "--run-dir", str(mount / "run"), "--no-dashboard"))
    done = on_tiny_disk(mount, "64k", f"{argv}; code=$?; ls -A {mount}/run; exit $code", tmp_path)
    assert done.returncode == 4, done.stdout + done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    (line,) = [text for text in done.stderr.splitlines() if text.strip()]
    assert "has 64 KiB free; a run needs at least 1024 KiB" in line, line
    assert "redis" not in done.stdout  # nothing was started
    assert leftovers(done.stdout.split("\n", 1)[-1]) == []


def test_loadgen_writes_each_report_whole_or_not_at_all_and_exits_4(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    mount = tmp_path / "disk"
    reports = ("--report", f"{mount}/r.json", "--html", f"{mount}/r.html", "--csv", f"{mount}/r")
    argv = flashsale_argv(
        "loadgen",
        "--url",
        pipeline.server_url,
        "--customers",
        "20",
        "--rate",
        "20/s",
        "--no-dashboard",
        *reports,
    )
    script = f"{shlex.join(argv)}; code=$?; echo LISTING; ls -A {mount}; exit $code"
    done = on_tiny_disk(mount, "8k", script, tmp_path)
    out = done.stdout
    assert done.returncode == 4, out + done.stderr
    assert "Traceback" not in out + done.stderr
    assert "customers" in out and "SLO" in out  # the figures are still printed
    assert f"REPORT NOT WRITTEN: cannot write {mount}/r.json: no space left on device" in out
    present = leftovers(out.split("LISTING", 1)[1])
    assert "r.json" not in present and "r.html" not in present, present
    assert not [name for name in present if name.startswith(".")], present  # no temporaries


def test_a_disk_that_fills_during_the_rehearsal_still_gives_the_verdict_and_exits_4(
    tmp_path: Path,
) -> None:
    mount = tmp_path / "disk"
    scenario = tmp_path / "full.toml"
    scenario.write_text(SCENARIO)
    printed = tmp_path / "rehearse.out"  # outside the tmpfs
    argv = flashsale_argv(
        "rehearse", "--scenario", str(scenario), "--run-dir", f"{mount}/run", "--no-dashboard"
    )
    # Once every worker is ready, fill the disk: the logs and every report meet ENOSPC.
    script = f"""
{shlex.join(argv)} > {printed} 2>&1 &
rehearsal=$!
tries=0
until grep -q 'threads ready' {printed}; do
  tries=$((tries + 1)); [ $tries -gt 1200 ] && break
  kill -0 $rehearsal 2>/dev/null || break
  sleep 0.05
done
dd if=/dev/zero of={mount}/filler bs=64k 2>/dev/null
wait $rehearsal; code=$?
echo LISTING; ls -A {mount}/run
exit $code
"""
    done = on_tiny_disk(mount, "2m", script, tmp_path)
    out = printed.read_text()
    assert "threads ready" in out, out
    assert done.returncode == 4, out + done.stdout + done.stderr
    assert "Traceback" not in out
    assert "rehearsal full-disk:" in out  # the verdict panel
    for name in ("loadgen.json", "report.json", "report.html"):
        line = f"flashsale rehearse: cannot write {mount}/run/{name}: no space left on device"
        assert line in out.splitlines(), out[-3000:]
    present = leftovers(done.stdout.split("LISTING", 1)[1])
    assert not {"loadgen.json", "report.json", "report.html"} & set(present), present
    assert not [name for name in present if name.startswith(".")], present
