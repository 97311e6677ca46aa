"""Every command in docs/*.md runs as shown, the pod recipe against a real
PostgreSQL server.

Each page's ```console commands run in page order in a scratch directory, after the
files its ```LANG FILENAME blocks show (tests/cli_examples.py has the format and the
runner); every command must exit 0. docs/pods.md describes a pod; to run it at tiny
scale the test changes exactly these things, and nothing else:
1. `export STORE=...` sets STORE to a fresh database on the test server
   (conftest.py's `pg_url`, written `postgresql://` as in the page);
2. `export RESULTS_DIR=...` sets RESULTS_DIR to `<scratch dir>/shared/results`;
3. in commands that use `$STORE`, the spec and sweep name `paper` becomes `smoke`
   (sweeps/specs/smoke.toml: 2 grid trials + 1 LR extension of 4 steps each);
4. a command ending in `# on every host` is started twice at once (two hosts joining).
The cluster-only commands (`--multihost`) are in plain blocks and are not run here;
tests/test_sweep_multihost.py runs that path with two local CPU processes.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from cli_examples import REPO, Step, page_steps, run_command, scratch_dir, scratch_env

DOCS = REPO / "docs"
PAGES = sorted(p.name for p in DOCS.glob("*.md") if "```console" in p.read_text())
ON_EVERY_HOST = "# on every host"


def steps(page: str) -> list[Step]:
    return page_steps((DOCS / page).read_text())


def test_runnable_examples_are_marked_as_such():
    """A `$ ` prompt only appears in ```console blocks (anything else would not be run),
    and the pages this test is about have examples."""
    for page in sorted(DOCS.glob("*.md")):
        inside, lang = False, ""
        for n, line in enumerate(page.read_text().splitlines(), start=1):
            if line.lstrip().startswith("```"):
                inside, lang = (not inside), line.strip()[3:].split(" ")[0]
                continue
            if line.lstrip().startswith("$ "):
                assert inside and lang == "console", f"{page.name}:{n}: `$ ` outside a ```console block"
    assert {"pods.md", "sweeps.md", "units.md", "data.md"} <= set(PAGES)
    pods = [s.text for s in steps("pods.md") if s.kind == "run"]
    for what in ("sweep run paper --dry-run", "sweep run paper --store", "sweep work", "sweep status",
                 "results export", "results import", "analyze", "plan"):
        assert any(what in c for c in pods), what
    assert sum(c.endswith(ON_EVERY_HOST) for c in pods) == 1


def pod_command(command: str, *, store: str, results_dir: Path) -> str:
    """Substitutions 1-3 of the module docstring."""
    if command.startswith("export STORE="):
        return f"export STORE={store}"
    if command.startswith("export RESULTS_DIR="):
        return f"export RESULTS_DIR={results_dir}"
    if "$STORE" in command:
        return re.sub(r"\bpaper\b", "smoke", command)
    return command


# Measured with a warm compile cache, 2 cores at load ~3: pods.md 24-31 s (two workers
# start at once: jax import + the smoke shape from the cache; 3 tiny trials; two
# analyses), training.md 13-21 s (two tiny runs), every other page under 5 s. The
# first run in a scratch slot compiles the smoke shape (+40-110 s, see cli_examples).
SLOW = {"pods.md": (pytest.mark.slow, pytest.mark.postgres), "training.md": (pytest.mark.slow,)}


@pytest.mark.parametrize("page", [pytest.param(p, marks=SLOW.get(p, ())) for p in PAGES])
def test_doc_commands_run_as_shown(page, request):
    with scratch_dir() as cwd:
        _run_page(page, cwd, request)


def _run_page(page: str, cwd: Path, request) -> None:
    env = scratch_env(cwd)
    store = None
    if any("$STORE" in s.text for s in steps(page)):
        import sqlalchemy as sa

        url = sa.engine.make_url(request.getfixturevalue("pg_url"))
        store = url.set(drivername="postgresql").render_as_string(hide_password=False)
    outputs: dict[str, list[str]] = {}
    for step in steps(page):
        if step.kind == "file":
            (cwd / step.name).write_text(step.text)
            continue
        command = step.text
        if store is not None:
            command = pod_command(command, store=store, results_dir=cwd / "shared" / "results")
        outs = run_command(command, cwd, env, copies=2 if command.endswith(ON_EVERY_HOST) else 1)
        outputs[command] = outs
        if command.startswith("scaling plan") and "--json" not in command:
            assert "predicted held-out loss" in outs[0], outs[0]
    if page == "pods.md":
        _check_pod_run(cwd, store, outputs)


def _check_pod_run(cwd: Path, store: str, outputs: dict[str, list[str]]) -> None:
    """The two "hosts" shared the smoke sweep through the store, each trial ran once,
    and the export, the report and the plan from the imported file exist."""
    from sweeps.store import Store

    st = Store(store, create=False)
    rows = st.rows("smoke")
    st.dispose()
    assert len(rows) == 3 and {r["status"] for r in rows} == {"done"}, rows
    (host_outs,) = [o for c, o in outputs.items() if c.endswith(ON_EVERY_HOST)]
    ran = [int(re.search(r"worker: ran (\d+) trials", o).group(1)) for o in host_outs]
    assert sum(ran) == len(rows), ran  # no trial trained twice, none left
    assert all((cwd / "shared" / "results" / "trials" / "smoke" / r["trial_id"][:16]).is_dir() for r in rows)
    with open(cwd / "paper_runs.csv") as f:
        assert sorted(r["trial_id"] for r in csv.DictReader(f)) == sorted(r["trial_id"] for r in rows)
    assert (cwd / "results" / "paper_report" / "report.html").exists()
    assert (cwd / "results" / "theirs_report" / "report.html").exists()
