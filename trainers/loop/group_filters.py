"""Group filters: which of a step's graded rollouts train (a registry; ``rollout.group_filter.kind``
picks one).

A filter runs after grading and before ``lead_step``: the length reward, PSI's statistics, the
target length L* and the advantages see only the rollouts it keeps, and only those reach the
policy update (a rejected rollout has no advantage and no loss). It may ask for more rounds of
generation (``draw(round)``: fresh prompts, deterministic in seed, step and round), so what it
costs shows in ``perf/rollout_tokens``. A filter is registered as its settings model::

    @register_group_filter("gfpo")
    class GFPOFilter(GroupFilter):
        kind: Literal["gfpo"] = "gfpo"
        keep: int = 8

        def select(self, first: Drawn, draw: Draw, groups_wanted: int) -> Drawn: ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field

from trainers.method.segments import Groups
from trainers.registry import Registry, kind_model
from trainers.settings import Strict


@dataclass
class Drawn:
    """Graded rollouts of one or more generation rounds. Rollout ``i`` answers group ``group[i]``
    (an index into ``problems`` and ``prompts``); tensors are (N,) or (N, T)."""

    problems: list  # one per group
    prompts: list[list[int]]  # one per group: its prompt's token ids
    group: torch.Tensor  # (N,) int64
    response_ids: torch.Tensor  # (N, T) right-padded
    lengths: torch.Tensor  # (N,) int64
    truncated: torch.Tensor  # (N,) bool
    logprobs: torch.Tensor  # (N, T) the sampler's
    scores: torch.Tensor  # (N,) float64: the correctness reward

    @classmethod
    def of(cls, problems: list, prompts: list[list[int]], n: int, rollouts, scores: list[float]) -> "Drawn":
        """A round's ``n`` rollouts per prompt (prompt-major ``Rollouts``) with their ``scores``."""
        device = rollouts.lengths.device
        group = torch.arange(len(prompts), device=device).repeat_interleave(n)
        return cls(problems, prompts, group, rollouts.response_ids, rollouts.lengths, rollouts.truncated,
                   rollouts.logprobs, torch.tensor(scores, dtype=torch.float64, device=device))

    @property
    def num_groups(self) -> int:
        return len(self.problems)

    @property
    def segments(self) -> Groups:
        """The group structure for ``trainers.method.segments``' per-group reductions (every group has a rollout)."""
        return Groups(torch.arange(self.num_groups, device=self.group.device), self.group)

    @property
    def num_tokens(self) -> int:
        return int(self.lengths.sum())

    def rows(self, rows: torch.Tensor) -> "Drawn":
        """The rollouts ``rows`` (ascending), with only the groups they answer (renumbered in order)."""
        kept_groups = torch.unique(self.group[rows])
        renumber = torch.full((self.num_groups,), -1, dtype=torch.int64, device=self.group.device)
        renumber[kept_groups] = torch.arange(kept_groups.numel(), device=self.group.device)
        index = kept_groups.tolist()
        return Drawn([self.problems[g] for g in index], [self.prompts[g] for g in index], renumber[self.group[rows]],
                     self.response_ids[rows], self.lengths[rows], self.truncated[rows], self.logprobs[rows],
                     self.scores[rows])

    def groups(self, kept: list[int]) -> "Drawn":
        """Every rollout of the groups ``kept`` (ascending group indices)."""
        return self.rows(torch.isin(self.group, torch.tensor(kept, dtype=torch.int64, device=self.group.device)).nonzero().squeeze(1))


def concat(parts: list[Drawn]) -> Drawn:
    """The rollouts of ``parts`` in order, as one ``Drawn`` (groups renumbered; responses padded
    to one width with 0, which nothing reads past a response's length)."""
    width = max(part.response_ids.shape[1] for part in parts)

    def padded(t: torch.Tensor, value) -> torch.Tensor:
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    offsets = [sum(p.num_groups for p in parts[:i]) for i in range(len(parts))]
    return Drawn(
        [q for p in parts for q in p.problems], [q for p in parts for q in p.prompts],
        torch.cat([p.group + off for p, off in zip(parts, offsets)]),
        torch.cat([padded(p.response_ids, 0) for p in parts]), torch.cat([p.lengths for p in parts]),
        torch.cat([p.truncated for p in parts]), torch.cat([padded(p.logprobs, 0.0) for p in parts]),
        torch.cat([p.scores for p in parts]),
    )


Draw = Callable[[int], Drawn]  # round -> that round's graded rollouts (round 0: the step's own prompts)


class GroupFilter(Strict):
    """What every group filter offers: ``select`` the rollouts that train."""

    def select(self, first: Drawn, draw: Draw, groups_wanted: int) -> Drawn:
        """The rollouts that train, from round 0's ``first`` and any further rounds it ``draw``\\ s."""
        raise NotImplementedError

    def check_run(self, n: int) -> None:
        """Raise ValueError (one line, naming the key) if ``n`` rollouts per prompt cannot work."""

    def smoke(self, n: int) -> dict[str, Any]:
        """These settings for a smoke test with ``n`` rollouts per prompt (default: unchanged)."""
        return self.model_dump()

    def rollouts_per_step(self, prompts: int, n: int) -> tuple[float, float]:
        """(generated, trained) rollouts of a step at most, for a cost estimate (default: all, once)."""
        return prompts * n, prompts * n


GROUP_FILTERS: Registry[type[GroupFilter]] = Registry("group filter", check=kind_model(GroupFilter))
register_group_filter = GROUP_FILTERS.register  # class decorator on a GroupFilter: @register_group_filter("gfpo")


def group_filter_settings(data: Any) -> GroupFilter:
    """A filter's settings from a mapping (``kind`` picks the registered model; default "none")."""
    return GROUP_FILTERS.settings_of(data, GroupFilter, "none")


@register_group_filter("none")
class KeepAll(GroupFilter):
    """Every rollout trains (GRPO as published)."""

    kind: Literal["none"] = "none"

    def select(self, first: Drawn, draw: Draw, groups_wanted: int) -> Drawn:
        return first


def informative_groups(drawn: Drawn) -> list[int]:
    """Groups whose scores vary (not all right, not all wrong), and groups of one rollout."""
    segments = drawn.segments
    varies = segments.amax(drawn.scores) > segments.amin(drawn.scores)
    return (varies | (segments.size() == 1)).nonzero().squeeze(1).tolist()


@register_group_filter("dynamic_sampling")
class DynamicSampling(GroupFilter):
    """DAPO's dynamic sampling (arXiv 2503.14476; DLER, arXiv 2510.15110, uses it too): drop every
    group whose correctness has zero variance (all right or all wrong: its GRPO advantage is 0;
    a group of one is kept), and draw rounds of ``prompts_per_step`` fresh prompts until
    ``prompts_per_step`` groups are kept or ``max_rounds`` rounds are spent; train on the first
    ``prompts_per_step`` groups kept, in the order drawn (fewer if the rounds ran out)."""

    kind: Literal["dynamic_sampling"] = "dynamic_sampling"
    max_rounds: int = Field(3, ge=1, description="generation rounds at most, the step's own included")

    def rollouts_per_step(self, prompts: int, n: int) -> tuple[float, float]:
        return prompts * n * self.max_rounds, prompts * n

    def select(self, first: Drawn, draw: Draw, groups_wanted: int) -> Drawn:
        kept, drawn = [], first
        for round_ in range(self.max_rounds):
            if round_:
                drawn = draw(round_)
            kept.append(drawn.groups(informative_groups(drawn)))
            if sum(part.num_groups for part in kept) >= groups_wanted:
                break
        out = concat(kept)
        return out.groups(list(range(min(groups_wanted, out.num_groups))))


GFPO_ADAPTIVE_SHARE = (0.5, 0.5, 0.375, 0.25)  # kept share of n by difficulty quartile, hardest first (8/8/6/4 of 16)


@register_group_filter("gfpo")
class GFPO(GroupFilter):
    """GFPO (arXiv 2508.09726): sample ``rollout.n`` = G responses per prompt and train on the
    ``keep`` best of each group: the shortest (``metric: length``) or those with the highest
    correctness per token, ``score / length`` (``token_efficiency``), ties to the shorter, then
    to the earlier rollout. The advantages are computed over the kept subset alone (its own mean
    and std). ``keep: adaptive`` (Adaptive Difficulty GFPO) keeps ``round(share * G)`` by the
    quartile of the prompt's mean score among this batch's prompts: shares 1/2, 1/2, 3/8, 1/4 from
    the hardest quartile to the easiest (8/8/6/4 of 16). The paper ranks a prompt against every
    prompt seen so far (a streaming digest); here against the step's batch, so a resumed run
    needs no extra state."""

    kind: Literal["gfpo"] = "gfpo"
    keep: int | Literal["adaptive"] = Field(8, description="responses kept per prompt, or adaptive")
    metric: Literal["length", "token_efficiency"] = "length"

    def check_run(self, n: int) -> None:
        if self.keep != "adaptive" and (self.keep < 1 or self.keep > n):
            raise ValueError(f"rollout.group_filter.keep: keeps 1 to rollout.n ({n}) responses per prompt, got {self.keep}")

    def smoke(self, n: int) -> dict[str, Any]:
        keep = self.keep if self.keep == "adaptive" else max(1, min(self.keep, n - 1))
        return {**self.model_dump(), "keep": keep}

    def rollouts_per_step(self, prompts: int, n: int) -> tuple[float, float]:
        share = sum(GFPO_ADAPTIVE_SHARE) / 4 if self.keep == "adaptive" else min(self.keep, n) / n
        return prompts * n, prompts * n * share

    def kept_per_group(self, drawn: Drawn) -> torch.Tensor:
        """How many responses each group keeps (int64, one per group)."""
        size = drawn.segments.size()
        if self.keep != "adaptive":
            return size.clamp(max=self.keep)
        _, mean, _ = drawn.segments.mean_popvar(drawn.scores)
        share = torch.tensor(GFPO_ADAPTIVE_SHARE, dtype=torch.float64, device=mean.device)[quartiles(mean)]
        return torch.minimum(size, torch.round(share * size).clamp(min=1).to(torch.int64))

    def select(self, first: Drawn, draw: Draw, groups_wanted: int) -> Drawn:
        length = first.lengths.to(torch.float64)
        badness = length if self.metric == "length" else -first.scores / length.clamp(min=1.0)
        # sort by (group, badness, length, row): each group's best first
        order = torch.arange(first.lengths.numel(), device=first.lengths.device)
        for key in (length, badness, first.group):
            order = order[torch.argsort(key[order], stable=True)]
        group = first.group[order]
        sizes = first.segments.size()
        rank = torch.arange(order.numel(), device=order.device) - (torch.cumsum(sizes, 0) - sizes)[group]
        chosen = order[rank < self.kept_per_group(first)[group]]
        return first.rows(chosen.sort().values)


def quartiles(values: torch.Tensor) -> torch.Tensor:
    """Each value's quartile among ``values``, 0 the lowest (ranked with ties to the lower rank:
    rank r of m goes to ``floor(4 r / m)``)."""
    m = values.numel()
    rank = (values[None, :] < values[:, None]).sum(1)
    return torch.div(4 * rank, m, rounding_mode="floor").clamp(max=3)
