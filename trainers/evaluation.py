"""Evaluation: the Accuracy-Efficiency Score against a base model."""

from __future__ import annotations


def aes(
    accuracy: float,
    length: float,
    base_accuracy: float,
    base_length: float,
    alpha: float = 1.0,
    beta: float = 3.0,
    gamma: float = 5.0,
) -> float:
    """Accuracy-Efficiency Score (O1-Pruner, arXiv 2501.12570), as used by LEAD.

    ``dL = (L_base - L) / L_base``, ``dA = (A - A_base) / A_base``;
    ``AES = alpha dL + beta dA`` when ``dA >= 0``, else ``alpha dL - gamma |dA|``.
    """
    if base_length <= 0:
        raise ValueError(f"base_length must be positive, got {base_length}")
    if base_accuracy <= 0:
        raise ValueError(f"base_accuracy must be positive, got {base_accuracy}")
    d_length = (base_length - length) / base_length
    d_accuracy = (accuracy - base_accuracy) / base_accuracy
    if d_accuracy >= 0:
        return alpha * d_length + beta * d_accuracy
    return alpha * d_length - gamma * abs(d_accuracy)
