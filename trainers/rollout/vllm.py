"""vLLM as the rollout engine, colocated with the trainer in one process.

The engine loads the starting weights from the model directory, then follows the trainer:
``sync_weights`` streams the trainer's state dict into vLLM's model in place (the worker's
``reload_weights``, run through ``collective_rpc``), then empties its prefix cache (TRL and verl
do the same after every sync, rather than trust that sleeping cleared it). vLLM's engine core
runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, set whatever the environment said:
in a subprocess the weights iterator could not follow it), so the tensors pass by reference, not
through a pipe. On a GPU, vLLM sleeps between rollouts (level 1: weights to host memory, KV cache
freed) so the policy update has the memory, and wakes for the next ``generate`` or
``sync_weights`` (after ``torch.cuda.empty_cache()``, so the update's cached blocks are free);
it takes ``gpu_memory_utilization`` of the GPU while awake, and is woken before it shuts down
(vLLM issue #36651: a shutdown while asleep releases unmapped memory). Needs vLLM 0.18
(``trainers.runtime.floors``).

Log-probabilities come from the sampler as processed (``logprobs_mode="processed_logprobs"``:
temperature and top-p applied), the same quantity the ``hf`` engine reports.

Reproducibility: every prompt gets its own seed derived from the call's ``seed``, spaced by
``n`` (vLLM gives the i-th sample of a prompt the seed ``seed + i``: consecutive prompt seeds
would share sampling noise between neighbouring rows), so the same
weights and seed give the same samples, but vLLM's batching and kernels do not promise bit-equal
results across runs the way the ``hf`` engine does; a resumed run continues from its checkpoint,
not bit for bit.
"""

from __future__ import annotations

import gc
import os

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # before vllm is imported; an inherited 1 would move the engine out
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache on a CPU
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # on a CPU: leave the trainer's threads where they are

import torch
import vllm
from vllm.inputs import TokensPrompt

from trainers.rollout import register_engine
from trainers.rollout.base import EngineSpec, Rollouts, SamplingParams
from trainers.runtime.floors import require_floor
from trainers.runtime.process import mix_seed


def prompt_seed(seed: int, row: int, n: int) -> int:
    """A reproducible seed for each prompt of a call, ``n`` apart: vLLM seeds a prompt's ``n``
    samples ``seed``, ``seed + 1``, ..., so no two samples of a call share a seed."""
    return mix_seed(seed, row * n) % (2**63)


@register_engine("vllm")
class VLLMRolloutEngine:
    """Samples with a ``vllm.LLM`` of its own, kept in step with the trainer's model."""

    def __init__(self, model: torch.nn.Module, tokenizer, spec: EngineSpec):
        require_floor("vllm", vllm.__version__)
        self.pad_token_id = tokenizer.pad_token_id
        self.device = next(model.parameters()).device  # rollouts go back to the trainer's device
        on_gpu = torch.cuda.is_available()  # what vLLM itself runs on
        self.sleeps = on_gpu
        set_num_threads = torch.set_num_threads  # vLLM's CPU worker replaces it with a no-op, process-wide
        self.llm = vllm.LLM(
            model=str(spec.model_path),
            dtype=spec.dtype,
            max_model_len=spec.max_model_len,
            seed=spec.seed,
            enforce_eager=not on_gpu,  # CUDA graphs on a GPU; nothing to capture on a CPU
            gpu_memory_utilization=spec.gpu_memory_utilization,
            enable_sleep_mode=on_gpu,
            logprobs_mode="processed_logprobs",
        )
        torch.set_num_threads = set_num_threads
        self.awake = True
        self.sync_weights(model)  # the trainer's model may already differ from the directory (a resume)

    def _wake(self) -> None:
        if not self.awake:
            torch.cuda.empty_cache()  # the update's cached blocks, free for vLLM's weights and KV cache
            self.llm.wake_up()
            self.awake = True

    def _sleep(self) -> None:
        if self.sleeps:
            self.llm.sleep(level=1)
            self.awake = False

    def close(self) -> None:
        """Shut the engine down and give its memory back (a driver's base evaluation must not keep
        a share of the GPU while trials run)."""
        self._wake()  # never shut down asleep: vLLM issue #36651
        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def sync_weights(self, model: torch.nn.Module) -> None:
        self._wake()
        weights = iter(model.state_dict().items())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights
        self._sleep()

    def generate(self, prompts: list[list[int]], n: int, sampling: SamplingParams, seed: int) -> Rollouts:
        self._wake()
        draws = 1 if sampling.temperature == 0 else n  # vLLM refuses n > 1 when greedy: the n copies are equal
        params = [
            vllm.SamplingParams(
                n=draws,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens,
                seed=prompt_seed(seed, row, draws),
                logprobs=0,  # the drawn token's own log-probability
                detokenize=False,
            )
            for row in range(len(prompts))
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        self._sleep()
        completions = [c for out in outputs for c in sorted(out.outputs, key=lambda c: c.index) for _ in range(n // draws)]
        lengths = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.long)
        width = int(lengths.max())
        response_ids = torch.full((len(completions), width), self.pad_token_id, dtype=torch.long)
        logprobs = torch.zeros((len(completions), width), dtype=torch.float32)
        for row, c in enumerate(completions):
            response_ids[row, : len(c.token_ids)] = torch.tensor(c.token_ids, dtype=torch.long)
            logprobs[row, : len(c.token_ids)] = torch.tensor(
                [position[token].logprob for position, token in zip(c.logprobs, c.token_ids)]
            )
        truncated = torch.tensor([c.finish_reason == "length" for c in completions])
        return Rollouts(*(t.to(self.device) for t in (response_ids, lengths, truncated, logprobs)))
