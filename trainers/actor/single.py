"""The single-process backend: the policy, its AdamW and the frozen reference in this process."""

from __future__ import annotations

import copy
import functools

import torch

from trainers.actor import register_backend
from trainers.actor.update import PolicyBatch, combine_sums, policy_update, token_logprobs
from trainers.runtime.process import autocast


@register_backend("single")
class SingleActor:
    def __init__(self, config, model: torch.nn.Module, log=print):
        self.config = config
        self.model = model
        self.module = model
        self.reference = copy.deepcopy(model).eval().requires_grad_(False) if config.train.kl_coef > 0 else None
        self.has_reference = self.reference is not None
        self.autocast = functools.partial(autocast, config.model.dtype, next(model.parameters()).device)
        if config.train.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)

    # the Trainee protocol of trainers.actor.update
    def forward(self, input_ids: torch.Tensor):
        with self.autocast():
            return token_logprobs(self.model, input_ids, self.config.rollout.temperature)

    def reference_forward(self, input_ids: torch.Tensor):
        with self.autocast():
            return token_logprobs(self.reference, input_ids, self.config.rollout.temperature)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.grad_clip))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm

    # the actor interface
    def update(self, batch: PolicyBatch, seed: int) -> dict[str, float]:
        return combine_sums([policy_update(self, batch, self.config, seed)])

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))  # torch would step the caller's tensors
        for group in self.optimizer.param_groups:  # this run's settings, not the saved ones (a PBT exploit may change them)
            group.update(lr=self.config.train.lr, weight_decay=self.config.train.weight_decay)

    def close(self) -> None:
        pass
