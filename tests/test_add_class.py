"""scripts/add_class.py's timing of a `dvc repro`: the stages DVC ran, each with its seconds, on the
small three-stage project (the full add-a-class run is `python -m scripts.add_class`, minutes long)."""

from __future__ import annotations

from dvc_project import make_project, set_params

from scripts.add_class import timed_repro


def test_timed_repro_names_the_stages_that_ran_and_their_seconds(tmp_path):
    repo = make_project(tmp_path / "repo")
    set_params(repo, train={"lr": 0.07})
    timed = timed_repro(repo)
    assert list(timed["stages"]) == ["train", "evaluate"]  # prepare's params did not change
    assert all(seconds >= 0 for seconds in timed["stages"].values())
    assert timed["seconds"] >= sum(timed["stages"].values()) - 0.2
    assert timed_repro(repo)["stages"] == {}  # nothing changed: nothing ran
