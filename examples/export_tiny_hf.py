"""Export a tiny random-weight Hugging Face decoder to ONNX with torch.onnx (dynamo).

Needs the hf extra (torch, transformers, onnxscript: ``pip install -e '.[hf]'``, CPU
torch as the README says). The sizes are deliberately not powers of two, and the weights
are initialised with a large range so that the logits are far from uniform:

    python examples/export_tiny_hf.py llama out/tiny-llama.onnx
    flightforge compile out/tiny-llama.onnx --target tiny --out out/tiny-llama.ffb --max-len 32
    flightforge run out/tiny-llama.ffb --target tiny --prompt-ids 1,2,3 --max-new-tokens 8

``--checkpoint`` exports a model trained by ``examples/train_tiny.py`` instead (e.g. the
test fixtures ``tests/fixtures/llama-s0-2_4.npz``).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def build(family: str, init_range: float, seed: int, intermediate: int = 200):
    """A tiny decoder of ``family``: hidden 96, 6 heads (Llama: 2 KV heads), 2 layers,
    vocabulary 300, MLP width ``intermediate`` (200 is not a multiple of 16, so the
    compiler's n:16 plans leave the MLP's output projection dense)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=300, initializer_range=init_range)
    if family == "llama":
        cfg = transformers.LlamaConfig(
            hidden_size=96,
            intermediate_size=intermediate,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=2,
            max_position_embeddings=128,
            **common,
        )
        return transformers.LlamaForCausalLM(cfg)
    if family == "opt":
        cfg = transformers.OPTConfig(
            hidden_size=96,
            num_hidden_layers=2,
            ffn_dim=intermediate,
            num_attention_heads=6,
            max_position_embeddings=64,
            word_embed_proj_dim=96,
            init_std=init_range,
            vocab_size=300,
        )
        return transformers.OPTForCausalLM(cfg)
    cfg = transformers.GPT2Config(
        n_embd=96, n_layer=2, n_head=6, n_positions=64, n_inner=intermediate, **common
    )
    return transformers.GPT2LMHeadModel(cfg)


def export(family: str, path: str, init_range: float = 0.2, seed: int = 0) -> None:
    export_model(build(family, init_range, seed), path)


def export_model(model, path: str, opset: int = 18) -> None:
    """Export a Hugging Face causal LM (in eval mode) as ``input_ids, attention_mask ->
    logits`` with a dynamic sequence axis, the form the frontend reads (at opset 23 the
    exporter writes Attention, RotaryEmbedding and RMSNormalization nodes)."""
    import torch

    model = model.eval()

    class Logits(torch.nn.Module):
        """input_ids, attention_mask -> logits, without the KV cache outputs."""

        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).logits

    seq = torch.export.Dim("seq", min=2, max=60)
    ids = torch.randint(0, model.config.vocab_size, (1, 8))
    torch.onnx.export(
        Logits(model).eval(),
        (ids, torch.ones(1, 8, dtype=torch.int64)),
        path,
        dynamo=True,
        opset_version=opset,
        external_data=False,
        dynamic_shapes={"input_ids": {1: seq}, "attention_mask": {1: seq}},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("family", choices=["llama", "opt", "gpt2"])
    ap.add_argument("out", help="ONNX file to write")
    ap.add_argument(
        "--init-range", type=float, default=0.2, help="standard deviation of the random weights"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--checkpoint",
        type=Path,
        help="export this checkpoint of examples/train_tiny.py (.npz) instead of random weights",
    )
    args = ap.parse_args()
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        ap.error(
            f"{e.name} is not installed: this script needs the hf extra, "
            "pip install -e '.[hf]' (CPU torch: README, Set-up)"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if args.checkpoint is None:
        export(args.family, args.out, args.init_range, args.seed)
    else:
        import train_tiny  # beside this script

        model, record = train_tiny.load(args.checkpoint)
        family = record["config"]["family"]
        if family != args.family:
            ap.error(f"{args.checkpoint} holds a {family} model, not {args.family}")
        export_model(model, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
