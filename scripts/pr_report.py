"""Write the pull-request review report: what a change did to the router, against a base revision.

    make pr-report BASE=main                          # = python -m scripts.pr_report --base main
    python -m scripts.pr_report --base origin/main --out report/pr

Writes, under --out (report/pr):
  report.md            `dvc metrics diff --md` and `dvc params diff --md` tables, then every PNG
                       under --figures (report/figures) that changed, base and head side by side
  metrics.md, params.md  the whole tables (report.md folds a long one and cuts it at 150 rows)
  figures/*.png        those images (links in report.md are relative to it, as CML expects)
  plots/index.html     `dvc plots diff`: every DVC plot, interactive (vega), base against head

The base side is the merge base of BASE and HEAD, as in GitHub's pull-request diff: commits that
landed on BASE after the branch was cut are not shown as this branch's changes (--no-merge-base
compares with BASE itself). The head side is the workspace, as in `dvc metrics diff`. Metrics,
params and figures are read from git (they are `cache: false`), so nothing needs pulling first.
CI posts report.md as one pull-request comment: .github/workflows/pr-report.yml.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# A pull-request comment holds at most 65,536 characters: long tables are cut (whole in out/*.md).
MAX_ROWS = 150
FOLD_ROWS = 25  # longer tables are folded into a <details> block


class ReportError(SystemExit):
    """A failure the user can act on: the message says what ran, what it said, what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(f"pr-report: {message}")


def _run(args: list[str], what: str, hint: str = "") -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, check=False)
    if result.returncode != 0:
        said = (result.stderr or result.stdout).decode(errors="replace").strip()
        raise ReportError(f"{what} failed: `{' '.join(args)}` said: {said or '(nothing)'}" + (f"\n{hint}" if hint else ""))
    return result


def git(*args: str, what: str = "git", hint: str = "") -> bytes:
    return _run(["git", *args], what, hint).stdout


def dvc(*args: str) -> tuple[str, str]:
    """stdout and stderr (where DVC puts its warnings) of the dvc of this interpreter's environment."""
    result = _run([sys.executable, "-m", "dvc", *args], f"dvc {args[0]} {args[1]}")
    return result.stdout.decode(), result.stderr.decode(errors="replace").strip()


def resolve_base(base: str, merge_base: bool) -> tuple[str, str]:
    """The commit the report compares with: (the name DVC's tables show, full sha)."""
    hint = (f"Fetch it first (git fetch origin {base.removeprefix('origin/')}; in CI, check out with "
            "fetch-depth: 0) or pass another --base.")
    tip = git("rev-parse", "--verify", f"{base}^{{commit}}", what=f"finding the base revision {base!r}",
              hint=hint).decode().strip()
    if not merge_base:
        return base, tip
    sha = git("merge-base", tip, "HEAD", what=f"the merge base of {base} and HEAD", hint=hint).decode().strip()
    return (base if sha == tip else sha[:12]), sha


def diff_section(kind: str, rev: str, out: Path) -> str:
    """`dvc {metrics,params} diff REV --md`, a line when nothing changed (DVC prints a bare header),
    and DVC's warnings: a file it could not parse shows as `-` in the table and the reason only there.
    The whole table goes to out/KIND.md; a long one is cut in the report and folded away."""
    table, warnings = dvc(kind, "diff", rev, "--md")
    rows = [line for line in table.splitlines() if line.startswith("|")]
    (out / f"{kind}.md").write_text(table)
    text = "\n".join(rows[:2 + MAX_ROWS]) if len(rows) > 2 else f"_No {kind.removesuffix('s')} changed._"
    if len(rows) - 2 > MAX_ROWS:
        text += f"\n\n… and {len(rows) - 2 - MAX_ROWS} more rows in `{kind}.md` beside this report."
    if len(rows) - 2 > FOLD_ROWS:
        text = f"<details><summary>{len(rows) - 2} {kind} changed</summary>\n\n{text}\n\n</details>"
    if warnings:
        text += "\n\n" + "\n".join(f"> **Warning** (dvc {kind} diff): {line}" for line in warnings.splitlines())
    return text


@dataclass
class FigureChange:
    path: str  # relative to the repository root
    base: bytes | None  # None: the figure is new
    head: bytes | None  # None: the figure was removed


def changed_figures(rev: str, folder: str) -> list[FigureChange]:
    """PNG files under folder whose bytes differ between rev (from git) and the workspace."""
    at_base = {p for p in git("ls-tree", "-r", "--name-only", rev, "--", folder).decode().splitlines()
               if p.endswith(".png")}
    in_head = {p.as_posix() for p in Path(folder).rglob("*.png")}
    changes = []
    for path in sorted(at_base | in_head):
        base = git("show", f"{rev}:{path}") if path in at_base else None
        head = Path(path).read_bytes() if path in in_head else None
        if base != head:
            changes.append(FigureChange(path, base, head))
    return changes


def _file_name(relative: str, taken: set[str]) -> str:
    """A name safe in a Markdown link and unique in the output folder: `sub dir/a+b` -> `sub_dir__a_b`."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", relative.replace("/", "__"))
    unique, n = name, 1
    while unique in taken:
        n += 1
        unique = f"{name}-{n}"
    taken.add(unique)
    return unique


def figure_rows(changes: list[FigureChange], folder: str, out: Path, base_label: str) -> list[str]:
    """Markdown for each changed figure; the images are written under out/figures."""
    (out / "figures").mkdir(parents=True, exist_ok=True)
    lines, taken = [], set()
    for change in changes:
        name = _file_name(Path(change.path).relative_to(folder).with_suffix("").as_posix(), taken)
        cells = []
        for side, data in (("base", change.base), ("head", change.head)):
            if data is None:
                cells.append("_(new)_" if side == "base" else "_(removed)_")
                continue
            (out / "figures" / f"{name}.{side}.png").write_bytes(data)
            cells.append(f"![{name} ({side})](figures/{name}.{side}.png)")
        lines += [f"### {change.path}", "", f"| {base_label} | this change |", "|---|---|",
                  f"| {cells[0]} | {cells[1]} |", ""]
    return lines


def render(compared: str, metrics: str, params: str, figures: list[str], plots_note: str) -> str:
    head = git("rev-parse", "--short", "HEAD").decode().strip()
    lines = ["## routelet: what this change does to the router", "",
             (f"Base: {compared}. Head: the workspace at `{head}`. The tables are DVC's own "
              "(`dvc metrics diff`, `dvc params diff`) and list only what changed."), "",
             "### Metrics", "", metrics, "", "### Params", "", params, "",
             "### Figures", ""]
    lines += figures or ["_No figure changed._", ""]
    lines += ["### Plots", "", plots_note, ""]
    return "\n".join(lines)


def write_report(base: str, out: Path, figures_folder: str, merge_base: bool = True) -> Path:
    rev, sha = resolve_base(base, merge_base)
    for stale in (out / "figures", out / "plots"):  # only the folders this script writes
        shutil.rmtree(stale, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    metrics, params = diff_section("metrics", rev, out), diff_section("params", rev, out)
    figures = figure_rows(changed_figures(sha, figures_folder), figures_folder, out, f"`{base}` (`{sha[:8]}`)")
    said = " ".join(dvc("plots", "diff", rev, "-o", str(out / "plots"))).strip()
    plots_note = ("`dvc plots diff` wrote `plots/index.html` beside this report (in CI: the `pr-report` "
                  "artifact of the run)." if (out / "plots" / "index.html").exists()
                  else f"_No DVC plots: {said or 'none defined'}_")
    report = out / "report.md"
    compared = (f"the merge base of `{base}` and HEAD, `{sha[:8]}`" if merge_base else f"`{base}`, `{sha[:8]}`")
    report.write_text(render(compared, metrics, params, figures, plots_note))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="main", help="the revision to compare with (default: main)")
    parser.add_argument("--out", type=Path, default=Path("report/pr"), help="output folder (default: report/pr)")
    parser.add_argument("--figures", default="report/figures",
                        help="folder of PNG figures to compare, relative to the repository root")
    parser.add_argument("--no-merge-base", dest="merge_base", action="store_false",
                        help="compare with BASE itself, not with the merge base of BASE and HEAD")
    args = parser.parse_args(argv)
    print(write_report(args.base, args.out, args.figures.rstrip("/"), args.merge_base))


if __name__ == "__main__":
    main()
