"""Parity of an exported router with the trained model: the gate before a router folder ships.

    report = route_parity(trained_probs, exported_probs, label_to_route)
    check_parity(report, min_agreement=0.995)      # ParityError says what to try
"""

from __future__ import annotations

import numpy as np

from routelet.evaluation.metrics import wilson


class ParityError(ValueError):
    """The exported router disagrees with the trained model more than the floor allows."""


def parity(reference: np.ndarray, candidate: np.ndarray, confident: float = 0.5) -> dict[str, float]:
    """How closely candidate probabilities follow the reference, row by row.

    agreement: share of rows with the same top label; max_abs_dp / mean_abs_dp: over all cells;
    confident_agreement: agreement on the rows where the reference's top probability is at least
    `confident` (the near-ties a router defers anyway are where quantisation flips labels)."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if reference.shape != candidate.shape:
        raise ValueError(f"parity: reference {reference.shape} and candidate {candidate.shape} differ in shape")
    if len(reference) == 0:
        return {"agreement": 1.0, "max_abs_dp": 0.0, "mean_abs_dp": 0.0, "confident_agreement": 1.0, "n": 0,
                "n_confident": 0}
    same = reference.argmax(axis=1) == candidate.argmax(axis=1)
    sure = reference.max(axis=1) >= confident
    dp = np.abs(reference - candidate)
    return {
        "agreement": float(same.mean()),
        "max_abs_dp": float(dp.max()),
        "mean_abs_dp": float(dp.mean()),
        "confident_agreement": float(same[sure].mean()) if sure.any() else 1.0,
        "n": int(len(reference)),
        "n_confident": int(sure.sum()),
    }


def check_parity(
    report: dict, min_agreement: float, where: str = "export_onnx.min_agreement", what: str = "int8 router"
) -> None:
    """Raise ParityError when the exported router is shown to agree with the trained model less than
    the floor allows. What is judged: the top route on the rows the trained model is confident about
    (top probability at least 0.5; near-ties are abstained on or deferred anyway), and "shown" means
    the 95% Wilson interval of that agreement lies wholly under the floor, so a small holdout (158 of
    160 rows agreeing) is not failed on two coin flips while 5,500 rows at 99.0% are.
    Reports without the confident figures are judged on plain agreement. `where` names the setting
    that holds the floor (shown to the user), `what` the candidate."""
    if "n_confident" in report and report["n_confident"]:
        agreed = round(report["confident_agreement"] * report["n_confident"])
        if wilson(agreed, report["n_confident"])[1] >= min_agreement:
            return
    elif report["agreement"] >= min_agreement:
        return
    rows = f" ({round(report['agreement'] * report['n'])} of {report['n']} rows)" if "n" in report else ""
    confident = (
        f", {report['confident_agreement']:.1%} where the trained model's top probability is at least 0.5"
        if "confident_agreement" in report
        else ""
    )
    raise ParityError(
        f"{what} agrees with the trained model on {report['agreement']:.1%} of the holdout{rows}, below the floor "
        f"{min_agreement:.1%} ({where}){confident}; max |dp| {report['max_abs_dp']:.4f}, mean |dp| "
        f"{report['mean_abs_dp']:.5f}. What to try: `dvc exp run -S export_onnx.int8=fp32` (no quantisation, "
        "slower) or `-S export_onnx.int8=blockwise` (closer to fp32); `export_onnx.fallback_fp32: true` ships "
        "fp32 by itself when int8 misses the floor. If fp32 disagrees too, the head, temperature, max_length "
        "or encoder given to the export is not the one the model was trained with."
    )


def route_parity(reference: np.ndarray, candidate: np.ndarray, to_routes: np.ndarray) -> dict:
    """Parity of the routes (fine probabilities summed per route), with fine-label agreement beside."""
    report = parity(reference @ to_routes, candidate @ to_routes)
    report["label_agreement"] = parity(reference, candidate)["agreement"]
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in report.items()}
