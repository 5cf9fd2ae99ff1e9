"""Figures for people (PNG) beside the DVC plot data: matplotlib, headless."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reliability_figure(curves: dict[str, list[dict]], path: str | Path) -> None:
    """One reliability diagram per family: accuracy against confidence, the diagonal is perfect."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for name, rows in curves.items():
        ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker="o", markersize=3, label=name)
    ax.set(xlabel="confidence (calibrated)", ylabel="accuracy", title="Reliability on the calibration split",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend()
    _save(fig, path)


def risk_coverage_figure(curves: dict[str, list[dict]], path: str | Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, rows in curves.items():
        ax.plot([r["coverage"] for r in rows], [r["risk"] for r in rows], label=name)
    ax.set(xlabel="coverage (share of requests accepted)", ylabel="risk (error among accepted)",
           title="Risk–coverage on the calibration split")
    ax.legend()
    _save(fig, path)


def confusion_figure(matrix: list[list[int]], names: list[str], title: str, path: str | Path) -> None:
    import numpy as np

    counts = np.array(matrix, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = max(5, 0.45 * len(names))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7 if len(names) > 20 else 9)
    ax.set_yticks(range(len(names)), names, fontsize=7 if len(names) > 20 else 9)
    if len(names) <= 20:
        for i in range(len(names)):
            for j in range(len(names)):
                if counts[i, j]:
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if shares[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted route", ylabel="true route", title=title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true route")
    _save(fig, path)


def scatter_figure(points: dict[str, tuple[float, float]], xlabel: str, ylabel: str, title: str,
                   path: str | Path, log_x: bool = False) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, (x, y) in points.items():
        ax.scatter([x], [y], s=60)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4))
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    _save(fig, path)


def curves_figure(curves: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, title: str,
                  path: str | Path, log_x: bool = False) -> None:
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
