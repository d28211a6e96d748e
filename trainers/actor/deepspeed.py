"""The DeepSpeed backend: ``train.workers`` processes train the policy with ZeRO (``train.zero_stage``).

This process stays the controller: it rolls out, grades, runs ``lead_step`` on the whole batch and
sends the batch to the workers, which each take their rows of every mini-batch
(``trainers.actor.update``), run forward and backward, and take the optimizer step together.
Afterwards worker 0 gathers the full weights and the controller loads them into ``actor.model``,
which the rollout engine follows. Workers are spawned processes, one per GPU (``cuda:RANK`` of the
GPUs this process sees) with NCCL, or CPU processes with gloo; they talk to the controller over
pipes. A worker that dies fails the step with ``WorkerFailed`` (the run restarts from its last
checkpoint); only the controller writes checkpoints.

Precision: ``model.dtype: bfloat16`` trains under DeepSpeed's bf16 mode (bf16 weights for compute,
float32 master weights in the optimizer, float32 gradient accumulation and reduction under ZeRO 1
and 2); checkpoints hold the float32 master weights, and a (re)start sets the masters from them
(not from DeepSpeed's bf16 copy). Workers die with the trial's process (``die_with_parent``), and
worker 0 hands its cached GPU blocks back after gathering full tensors. Needs DeepSpeed 0.19.4
(``trainers.runtime.floors``).
State in and out is full (unsharded): the weights and a torch ``AdamW`` state dict, gathered with
DeepSpeed's ``safe_get_full_*`` helpers, so checkpoints move between backends and worker counts.
Workers start at the first update; loading a state (re)starts them with it.
"""

from __future__ import annotations

import copy
import os
import signal
import sys
import time
import traceback

import torch
import torch.multiprocessing as mp

from trainers.actor import register_backend
from trainers.actor.update import PolicyBatch, combine_sums, policy_update, token_logprobs
from trainers.runtime import kernels
from trainers.runtime.floors import require_floor
from trainers.runtime.process import free_port

ADAM_STATES = ("exp_avg", "exp_avg_sq")


class WorkerFailed(RuntimeError):
    """A training worker died or raised; the message names it and says why."""


class PolicyLogprobs(torch.nn.Module):
    """The policy as DeepSpeed drives it: token ids in, ``token_logprobs`` out (chunked vocabulary)."""

    def __init__(self, model: torch.nn.Module, temperature: float):
        super().__init__()
        self.model = model
        self.temperature = temperature

    def forward(self, input_ids: torch.Tensor):
        return token_logprobs(self.model, input_ids, self.temperature)


def deepspeed_config(config, world: int) -> dict:
    """bf16 (``model.dtype: bfloat16``): bf16 compute, float32 master weights, and, under ZeRO 1 and
    2, gradients accumulated and reduced in float32, as the single backend (autocast, float32
    gradients) and verl do; DeepSpeed's default would accumulate and all-reduce them in bf16."""
    train = config.train
    bf16 = config.model.dtype == "bfloat16"
    float32_gradients = {"data_types": {"grad_accum_dtype": "fp32"}, "communication_data_type": "fp32"}
    return {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "train_batch_size": train.micro_batch_size * world,
        "managed_gradient_accumulation": False,  # backward() accumulates; each step() reduces and updates
        "gradient_clipping": train.grad_clip,
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
        **(float32_gradients if bf16 and train.zero_stage < 3 else {}),
    }


class _Worker:
    """One training process: the ``Trainee`` that ``policy_update`` drives."""

    def __init__(self, rank: int, world: int, config, model_path: str, state: dict | None):
        import deepspeed

        self.config, self.rank, self.world = config, rank, world
        cuda = torch.cuda.is_available() and config.model.device != "cpu"
        self.device = torch.device(f"cuda:{rank}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo", verbose=False)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)  # the base model
        self.reference = None
        self.has_reference = config.train.kl_coef > 0
        if self.has_reference:  # the base model, frozen, whatever state the policy resumes from
            dtype = torch.bfloat16 if config.model.dtype == "bfloat16" else torch.float32
            self.reference = copy.deepcopy(model).to(self.device, dtype).eval().requires_grad_(False)
        if state is not None:
            model.load_state_dict(state["model"])
        self.state_keys = list(model.state_dict())  # before ZeRO partitions it
        if config.train.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay)
        self.engine, *_ = deepspeed.initialize(
            model=PolicyLogprobs(model.to(self.device), config.rollout.temperature),
            optimizer=optimizer,
            config=deepspeed_config(config, world),
        )
        self.module = self.engine.module.model
        if state is not None and config.model.dtype == "bfloat16":
            self._restore_masters(state["model"])
        self._create_optimizer_state()
        if state is not None and state.get("optimizer"):
            self._load_optimizer(state["optimizer"])

    # the Trainee protocol of trainers.actor.update
    def forward(self, input_ids: torch.Tensor):
        return self.engine(input_ids)

    def reference_forward(self, input_ids: torch.Tensor):
        return token_logprobs(self.reference, input_ids, self.config.rollout.temperature)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self) -> float:
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else 0.0

    # commands from the controller
    def update(self, batch: PolicyBatch, seed: int) -> dict:
        return policy_update(self, batch.to(self.device), self.config, seed, self.rank, self.world)

    def weights(self) -> dict | None:
        """The full float32 weights on worker 0 (None elsewhere); every worker takes part in the gathers."""
        from deepspeed.utils import safe_get_full_fp32_param

        full = {id(p): safe_get_full_fp32_param(p) for p in self.module.parameters()}
        if self.rank != 0:
            return None
        by_name = dict(self.module.named_parameters(remove_duplicate=False))  # tied weights under every name
        return {  # (the module's own state_dict() would gather ZeRO-3 parameters on this worker alone)
            name: (full[id(by_name[name])] if name in by_name else self.module.get_buffer(name)).detach().float().cpu().clone()
            for name in self.state_keys
        }

    def state_dict(self) -> dict | None:
        """Weights and a torch ``AdamW`` state dict, full, on worker 0 (None elsewhere)."""
        from deepspeed.utils import safe_get_full_optimizer_state

        weights = self.weights()
        params = list(self.module.parameters())
        moments = {key: [safe_get_full_optimizer_state(p, key) for p in params] for key in ADAM_STATES}
        if self.rank != 0:
            return None
        inner = self.engine.optimizer.optimizer
        step = torch.as_tensor(next(iter(inner.state.values()))["step"], dtype=torch.float32).cpu()
        group = {k: v for k, v in inner.param_groups[0].items() if k != "params"}
        state = {i: {"step": step.clone(), **{key: moments[key][i].detach().cpu().clone() for key in ADAM_STATES}}
                 for i in range(len(params))}
        return {"model": weights, "optimizer": {"state": state, "param_groups": [{**group, "params": list(state)}]}}

    def _restore_masters(self, weights: dict) -> None:
        """``deepspeed.initialize`` casts the parameters to bf16 and builds the float32 master
        weights from that copy: on every (re)start (a resume, a PBT exploit, a worker retry) the
        saved float32 weights would lose their low 16 bits. Set the masters from the saved ones."""
        from deepspeed.utils import safe_set_full_fp32_param

        for name, parameter in self.module.named_parameters():
            safe_set_full_fp32_param(parameter, weights[name].to(self.device, torch.float32))

    def _create_optimizer_state(self) -> None:
        """AdamW creates its state at the first step, and ZeRO links each parameter to its slice of
        it then: create and link it now, so a state can be read before a step and filled after a load."""
        inner = self.engine.optimizer.optimizer  # the torch AdamW over this worker's partitions
        partitions = getattr(self.engine.optimizer, "fp32_partitioned_groups_flat", None)  # ZeRO-3's
        for p in partitions or [p for group in inner.param_groups for p in group["params"]]:
            if not inner.state[p]:
                inner.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                  "exp_avg_sq": torch.zeros_like(p)}
        if hasattr(self.engine.optimizer, "_lazy_init_hp_params_optimizer_state"):  # ZeRO 1-2's link
            self.engine.optimizer._lazy_init_hp_params_optimizer_state()

    def _load_optimizer(self, optimizer: dict) -> None:
        from deepspeed.utils import safe_set_full_optimizer_state

        inner = self.engine.optimizer.optimizer
        for i, p in enumerate(self.module.parameters()):
            for key in ADAM_STATES:
                safe_set_full_optimizer_state(p, optimizer["state"][i][key].to(self.device), key)
        steps = int(optimizer["state"][0]["step"]) if optimizer["state"] else 0
        for state in inner.state.values():
            if "step" in state:
                state["step"] = torch.full_like(torch.as_tensor(state["step"]), steps)
        self.engine.global_steps = steps


def die_with_parent(parent: int) -> None:
    """Be SIGKILLed when the parent dies (Linux ``PR_SET_PDEATHSIG``): a trial process killed
    outright (Ray's SIGKILL of a stuck trial, the OOM killer) would otherwise leave its workers
    holding the GPUs, and the retry would run out of memory. The signal follows the thread that
    started the workers: the trial's training thread, which outlives them."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


def _worker_main(rank: int, world: int, port: int, conn, config_json: str, model_path: str, state, threads: int,
                 parent: int) -> None:
    die_with_parent(parent)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)})
    from trainers.config import TrainConfig

    try:
        kernels.level()  # the controller's CPU kernel level holds here too (inherited), or the worker says why not
        torch.set_num_threads(threads)
        worker = _Worker(rank, world, TrainConfig.model_validate_json(config_json), model_path, state)
        conn.send(("ready", None))
        while True:
            command, args = conn.recv()
            if command == "close":
                return
            answer = getattr(worker, command)(*args)
            if command in ("weights", "state_dict") and worker.device.type == "cuda":
                torch.cuda.empty_cache()  # the full tensors it gathered: not kept beside vLLM on GPU 0
            conn.send(("ok", answer))
    except Exception:  # the controller reports it, naming this worker
        conn.send(("error", traceback.format_exc()))


@register_backend("deepspeed")
class DeepSpeedActor:
    def __init__(self, config, model: torch.nn.Module, log=print):
        require_floor("deepspeed")
        self.config, self.model, self.log = config, model, log
        self.workers: list = []
        self.state: dict | None = None  # what the next start loads (None: the model's own weights)

    def _start(self, state: dict | None) -> None:
        context = mp.get_context("spawn")
        world, port = self.config.train.workers, free_port()
        self.workers = []
        for rank in range(world):
            ours, theirs = context.Pipe()
            process = context.Process(
                target=_worker_main,
                args=(rank, world, port, theirs, self.config.model_dump_json(), self.model.name_or_path, state,
                      max(1, torch.get_num_threads() // world), os.getpid()),  # the controller's threads, shared out
                daemon=True,
            )
            process.start()
            self.workers.append((process, ours))
        self._gather()
        self.log(f"deepspeed: {world} workers, ZeRO stage {self.config.train.zero_stage}")

    def _gather(self) -> list:
        """Every worker's answer; WorkerFailed if one died or raised (a dead worker is named first:
        its peers then fail in their collectives)."""
        answers = []
        for rank, (process, conn) in enumerate(self.workers):
            while not conn.poll(1.0):
                if not process.is_alive():
                    self._fail(f"training worker {rank} (pid {process.pid}) exited with code {process.exitcode}")
            try:
                kind, value = conn.recv()
            except EOFError:
                self._fail(f"training worker {rank} (pid {process.pid}) closed its pipe")
            if kind == "error":
                self._fail(f"training worker {rank} failed:\n{value}")
            answers.append(value)
        return answers

    def _fail(self, message: str):
        time.sleep(1.0)  # let a killed worker's exit register before naming who died
        dead = [f"training worker {rank} (pid {p.pid}) exited with code {p.exitcode}"
                for rank, (p, _) in enumerate(self.workers) if not p.is_alive() and p.exitcode not in (0, None)]
        self.close()
        raise WorkerFailed("; ".join(dead) if dead else message)

    def _call(self, command: str, *args) -> list:
        if not self.workers:  # started at first use, so that a resume starts them once, with its state
            self._start(self.state)
        for _, conn in self.workers:
            conn.send((command, args))
        return self._gather()

    def update(self, batch: PolicyBatch, seed: int) -> dict[str, float]:
        sums = combine_sums(self._call("update", batch.to("cpu"), seed))
        self.model.load_state_dict(self._call("weights")[0])  # what the rollout engine samples from next
        return sums

    def state_dict(self) -> dict:
        return self._call("state_dict")[0]

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.close()
        self.state = state

    def close(self) -> None:
        for process, conn in self.workers:
            if process.is_alive():
                try:
                    conn.send(("close", ()))
                except (BrokenPipeError, OSError):
                    pass
        for process, _ in self.workers:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
        self.workers = []
