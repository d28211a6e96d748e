"""Loss aggregations: how a mini-batch's per-token losses become the loss of its optimizer step (a
registry; ``train.loss_aggregation`` names one).

    @register_loss_aggregation("token_mean")
    def token_mean(tokens: int, rows: int, budget: int) -> float:
        return max(tokens, 1)

An aggregation returns the denominator: the mini-batch loss is ``sum_i sum_t loss_it / denominator``
over its response tokens, given the mini-batch's response ``tokens``, its ``rows`` (sequences) and
the step's generation ``budget`` (``max_new_tokens``). The ``loss/*`` metrics stay token means
whatever the aggregation, so they compare across arms.
"""

from __future__ import annotations

from collections.abc import Callable

from trainers.registry import Registry

LossAggregation = Callable[[int, int, int], float]
LOSS_AGGREGATIONS: Registry[LossAggregation] = Registry("loss aggregation")
register_loss_aggregation = LOSS_AGGREGATIONS.register


@register_loss_aggregation("token_mean")
def token_mean(tokens: int, rows: int, budget: int) -> float:
    """DAPO's token-level mean (arXiv 2503.14476), verl's ``token-mean``: ``sum_i sum_t l_it / sum_i |o_i|``."""
    return float(max(tokens, 1))


@register_loss_aggregation("budget")
def budget(tokens: int, rows: int, budget: int) -> float:
    """Dr. GRPO (arXiv 2503.20783): each sequence's summed token loss over the generation budget,
    then the mean over the mini-batch's G sequences: ``(1 / G) sum_i sum_t l_it / budget``. verl's
    ``seq-mean-token-sum-norm`` (``loss_scale_factor = budget``) is exactly G times this: despite
    its name it takes no mean over sequences, ``sum_i sum_t l_it / budget``, so a learning rate
    tuned under it corresponds to G times that rate here (``tests/test_policy_losses.py``)."""
    return float(max(rows, 1) * budget)
