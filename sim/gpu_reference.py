"""Reference GPUs at batch 1: roofline *models*, not measurements.

Each step of a decoder costs ``max(bytes / bandwidth, flops / peak)`` on a GPU with
the given peak memory bandwidth and dense FP16 tensor throughput: every weight is read
once per step (decode) or once per prompt (prefill), plus the KV cache. Real GPUs reach
a fraction of either roof (FlightLLM measured vLLM on V100S/A100 at roughly half the
bandwidth roof at batch 1), so these are upper bounds on throughput, labelled as models
wherever they are printed. Peak figures are the vendors' data-sheet numbers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSpec:
    name: str
    bandwidth_gbs: float  #: peak memory bandwidth, GB/s
    fp16_tflops: float  #: peak dense FP16 tensor throughput, TFLOP/s
    source: str


GPUS = {
    "V100S": GpuSpec("V100S (32 GB HBM2)", 1134.0, 130.0, "NVIDIA V100S data sheet"),
    "A100": GpuSpec("A100 80GB SXM", 2039.0, 312.0, "NVIDIA A100 data sheet"),
    "H100": GpuSpec("H100 SXM", 3350.0, 989.0, "NVIDIA H100 data sheet (dense)"),
}


@dataclass(frozen=True)
class DecoderCost:
    """What one token costs a decoder at batch 1, independent of the hardware."""

    params: float  #: weights read per step (all Linear layers, LM head included)
    layers: int
    kv_heads: int
    head_dim: int
    hidden: int
    weight_bytes: float = 2.0  #: FP16
    kv_bytes: float = 2.0  #: FP16 KV cache

    @classmethod
    def llama2_7b(cls) -> DecoderCost:
        layer = 4 * 4096 * 4096 + 3 * 4096 * 11008
        return cls(32 * layer + 32000 * 4096, 32, 32, 128, 4096)

    def decode_bytes(self, position: int) -> float:
        kv = 2 * self.layers * self.kv_heads * self.head_dim * (position + 1) * self.kv_bytes
        return self.params * self.weight_bytes + kv

    def decode_flops(self, position: int) -> float:
        attn = 2 * 2 * self.layers * self.hidden * (position + 1)
        return 2 * self.params + attn

    def prefill_flops(self, length: int) -> float:
        attn = 2 * 2 * self.layers * self.hidden * length * (length + 1) / 2
        return 2 * self.params * length + attn


@dataclass(frozen=True)
class GpuEstimate:
    gpu: str
    prefill_s: float
    decode_s: float
    decode_tokens_per_s: float
    bound: str  #: which roof limits decode


def roofline(spec: GpuSpec, cost: DecoderCost, prompt_len: int, decode_steps: int) -> GpuEstimate:
    """Modelled prefill latency and decode throughput of one request (batch 1)."""
    bw = spec.bandwidth_gbs * 1e9
    peak = spec.fp16_tflops * 1e12
    prefill = max(cost.decode_bytes(prompt_len - 1) / bw, cost.prefill_flops(prompt_len) / peak)
    decode = 0.0
    mem_bound = 0
    for p in range(prompt_len, prompt_len + decode_steps):
        t_mem, t_cmp = cost.decode_bytes(p) / bw, cost.decode_flops(p) / peak
        decode += max(t_mem, t_cmp)
        mem_bound += t_mem >= t_cmp
    rate = decode_steps / decode if decode else 0.0
    bound = "bandwidth" if mem_bound * 2 >= decode_steps else "compute"
    return GpuEstimate(spec.name, prefill, decode, rate, bound)
