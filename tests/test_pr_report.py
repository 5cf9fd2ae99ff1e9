"""scripts/pr_report.py on a tiny git + DVC project (tests/dvc_project.py): a branch that changes a
param, reproduced and committed, reported against main; the report of a commit against itself; the
merge base; new, removed and oddly named figures; a metrics file DVC cannot parse; a table too long
for a pull-request comment; a base that does not exist."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from dvc_project import commit, env, make_project, run, set_params

pytestmark = pytest.mark.slow  # each test runs dvc and git a dozen times: 5-20 s on a loaded machine

ROOT = Path(__file__).resolve().parents[1]


def pr_report(repo: Path, *args: str, check: bool = True):
    return run([sys.executable, "-m", "scripts.pr_report", *args], repo, check=check,
               environ=env(PYTHONPATH=str(ROOT)))


def branch_with_a_change(repo: Path, **params) -> None:
    run(["git", "switch", "-q", "-c", "feature"], repo)
    set_params(repo, **params)
    run(["dvc", "repro", "-q"], repo)
    commit(repo, "a change")


def table_rows(report: str, heading: str) -> list[list[str]]:
    """The body rows of the Markdown table under `### heading`, cells stripped."""
    section = report.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.fixture
def repo(tmp_path):
    return make_project(tmp_path / "repo")


def test_a_change_shows_its_metric_and_param_diff_and_the_figure_before_and_after(repo):
    base_png = (repo / "report/figures/curve.png").read_bytes()
    branch_with_a_change(repo, train={"lr": 0.08})

    pr_report(repo, "--base", "main")
    out = repo / "report/pr"
    report = (out / "report.md").read_text()

    # accuracy = 0.5 + lr * steps / 10 moved; steps did not and is not listed
    assert table_rows(report, "Metrics") == [["metrics.json", "accuracy", "0.525", "0.54", "0.015"]]
    assert table_rows(report, "Params") == [["params.yaml", "train.lr", "0.05", "0.08"]]
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert links == ["figures/curve.base.png", "figures/curve.head.png"]
    assert (out / links[0]).read_bytes() == base_png
    assert (out / links[1]).read_bytes() == (repo / "report/figures/curve.png").read_bytes() != base_png
    assert "0.54" in (out / "plots/index.html").read_text()  # the vega data of plots/curve.json


def test_a_commit_against_itself_changes_nothing(repo):
    pr_report(repo, "--base", "HEAD")
    report = (repo / "report/pr/report.md").read_text()
    assert "_No metric changed._" in report and "_No param changed._" in report
    assert "_No figure changed._" in report
    assert table_rows(report, "Metrics") == [] and "![" not in report


def test_the_base_is_the_merge_base_so_later_commits_on_main_are_not_this_branch(repo):
    branch_with_a_change(repo, train={"lr": 0.08})
    run(["git", "switch", "-q", "main"], repo)
    set_params(repo, train={"steps": 6})  # lands on main after the branch was cut
    run(["dvc", "repro", "-q"], repo)
    commit(repo, "main moves on")
    run(["git", "switch", "-q", "feature"], repo)
    run(["dvc", "checkout", "-q"], repo)

    pr_report(repo, "--base", "main")
    params = table_rows((repo / "report/pr/report.md").read_text(), "Params")
    assert [row[1] for row in params] == ["train.lr"]

    pr_report(repo, "--base", "main", "--no-merge-base")
    params = table_rows((repo / "report/pr/report.md").read_text(), "Params")
    assert sorted(row[1] for row in params) == ["train.lr", "train.steps"]


def test_new_removed_and_oddly_named_figures(repo):
    figures = repo / "report/figures"
    (figures / "sub dir").mkdir()
    (figures / "sub dir" / "a+b (1).png").write_bytes(b"\x89PNG old")
    (figures / "gone.png").write_bytes(b"\x89PNG gone")
    commit(repo, "two more figures")
    (figures / "gone.png").unlink()
    (figures / "sub dir" / "a+b (1).png").write_bytes(b"\x89PNG new")
    (figures / "fresh.png").write_bytes(b"\x89PNG fresh")

    pr_report(repo, "--base", "HEAD")
    out = repo / "report/pr"
    report = (out / "report.md").read_text()
    for path, cells in (("report/figures/fresh.png", ["_(new)_", "![fresh (head)](figures/fresh.head.png)"]),
                        ("report/figures/gone.png", ["![gone (base)](figures/gone.base.png)", "_(removed)_"])):
        assert f"| {cells[0]} | {cells[1]} |" in report.split(f"### {path}\n", 1)[1]
    # The space, the plus and the brackets would break the Markdown link: the copy's name is safe.
    assert "](figures/sub_dir__a_b__1_.base.png)" in report
    assert (out / "figures/sub_dir__a_b__1_.base.png").read_bytes() == b"\x89PNG old"
    assert (out / "figures/sub_dir__a_b__1_.head.png").read_bytes() == b"\x89PNG new"
    assert "curve" not in report  # unchanged


def test_a_metrics_file_dvc_cannot_parse_is_flagged_not_reported_as_no_change(repo):
    (repo / "metrics.json").write_text("{not json")
    pr_report(repo, "--base", "HEAD")
    report = (repo / "report/pr/report.md").read_text()
    assert ["metrics.json", "accuracy", "0.525", "-", "-"] in table_rows(report, "Metrics")
    assert "**Warning** (dvc metrics diff): DVC failed to load some metrics" in report


def test_a_base_that_does_not_exist_says_which_and_how_to_fetch_it(repo):
    result = pr_report(repo, "--base", "origin/release", check=False)
    assert result.returncode != 0
    assert "pr-report: finding the base revision 'origin/release' failed" in result.stderr
    assert "git fetch origin release" in result.stderr and "fetch-depth: 0" in result.stderr
    assert not (repo / "report/pr/report.md").exists()


def test_a_long_table_is_folded_and_cut_and_kept_whole_beside_the_report(repo):
    # A pull-request comment holds 65,536 characters; 300 changed metrics would not fit.
    (repo / "metrics.json").write_text(json.dumps({f"count_{i:03d}": i for i in range(300)}))
    pr_report(repo, "--base", "HEAD")
    out = repo / "report/pr"
    report = (out / "report.md").read_text()
    assert "<details><summary>302 metrics changed</summary>" in report  # + accuracy and steps, gone
    assert len(table_rows(report, "Metrics")) == 150
    assert "… and 152 more rows in `metrics.md` beside this report." in report
    assert len([line for line in (out / "metrics.md").read_text().splitlines() if line.startswith("|")]) == 304
    assert len(report) < 65_536
