"""Time the image pipeline as a user runs it, in a scratch copy of the project: `dvc repro` from a
clean cache, then adding a class (20 screenshots of a new screen type and a taxonomy line) and
`dvc repro export_onnx` with the embedding cache warm, until the torch-free runtime has loaded the
new router and routed the new class's held-out images.

    python -m scripts.add_class                         # data/screens, effnet-lite0 -> report/add_class.json
    python -m scripts.add_class --work /tmp/ac --keep   # keep the scratch project to look inside

Writes one JSON object: per phase the wall seconds, the stages DVC ran with the seconds from each
stage's start to the next one's (DVC's own bookkeeping included), and for the added class the share
of its test images the new router routes to it. The host probe (load average) is recorded beside
them: on a shared host the seconds move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("dvc.yaml", "params.yaml", "stages", "src", "evals", "report/baselines.json")
# This interpreter's bin first: DVC, and the `python` of the stages' commands.
BIN_FIRST = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def scratch_project(work: Path, data: Path, model: str) -> None:
    """The pipeline and the dataset copied into `work`, params pointed at them, git + DVC initialised."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for name in COPIED:
        source, target = ROOT / name, work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, target)
    shutil.copytree(data, work / "data" / data.name)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"]["dir"] = f"data/{data.name}"
    params["model"] = model
    params["export_onnx"]["ship"] = "image_embed"  # the encoder router: what adding a class must retrain
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                    ["git", "-c", "user.name=bench", "-c", "user.email=bench@routelet.invalid", "commit", "-qm", "scratch"]):
        subprocess.run(command, cwd=work, env=os.environ | BIN_FIRST, check=True, capture_output=True)


def timed_repro(work: Path, *targets: str) -> dict:
    """`dvc repro [targets]`, its output streamed; seconds in all and per stage it ran."""
    env = os.environ | BIN_FIRST | {"ROUTELET_CACHE": str(work / ".cache" / "routelet")}
    start = time.perf_counter()
    marks = []
    with subprocess.Popen(["dvc", "repro", *targets], cwd=work, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            print(line, end="", file=sys.stderr)
            if line.startswith("Running stage"):
                marks.append((line.split("'")[1], time.perf_counter() - start))
    total = time.perf_counter() - start
    if process.returncode:
        raise SystemExit(f"dvc repro {' '.join(targets)} failed in {work} (exit {process.returncode})")
    ends = [at for _, at in marks[1:]] + [total]
    return {"seconds": round(total, 1),
            "stages": {name: round(end - at, 1) for (name, at), end in zip(marks, ends)}}


def route_new_class(work: Path, data_dir: str, label: str) -> dict:
    """Load data/router with the torch-free runtime and route the new class's test images."""
    from routelet.serving.runtime import Router

    rows = [json.loads(line) for line in (work / data_dir / "test.jsonl").read_text().splitlines() if line.strip()]
    images = [str(work / data_dir / row["image"]) for row in rows if row["label"] == label]
    start = time.perf_counter()
    routes = [result["route"] for result in Router.load(work / "data" / "router").route(images)]
    return {"seconds": round(time.perf_counter() - start, 2), "test_images": len(images),
            "routed_to_it": round(float(np.mean([route == label for route in routes])), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description="Time a clean image-pipeline repro and adding a class to it.")
    parser.add_argument("--data", default="data/screens", help="an image dataset folder made by scripts.make_screens")
    parser.add_argument("--model", default="effnet-lite0", help="an image encoder of params.yaml `encoders`")
    parser.add_argument("--new-class", default="ocr_document", help="the screen type added")
    parser.add_argument("--work", default="/tmp/routelet-add-class", help="the scratch project (replaced)")
    parser.add_argument("--out", default="report/add_class.json")
    parser.add_argument("--keep", action="store_true", help="keep the scratch project")
    args = parser.parse_args()
    work, data = Path(args.work), Path(args.data)
    if not (data / "taxonomy.yaml").is_file():
        raise SystemExit(f"{data}: no image dataset there: make it with `make screens` (or `dvc pull {data}`)")
    scratch_project(work, data, args.model)
    result = {"data": str(data), "model": args.model, "load_before": os.getloadavg()[0]}
    result["clean_repro"] = timed_repro(work)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "scripts.make_screens", "--out", str(work / "data" / data.name),
                    "--new-class", args.new_class, "--count", "20", "--seed", "7"], cwd=ROOT, check=True,
                   capture_output=True)
    added = time.perf_counter() - start
    repro = timed_repro(work, "export_onnx")
    routed = route_new_class(work, f"data/{data.name}", args.new_class)
    result["add_class"] = {"new_class": args.new_class, "images_written_s": round(added, 1), "repro": repro,
                           "route": routed, "seconds": round(repro["seconds"] + routed["seconds"], 1),
                           "target_s": 30}
    result["load_after"] = os.getloadavg()[0]
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
