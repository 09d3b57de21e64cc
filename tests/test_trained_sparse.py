"""Trained N:M-sparse tiny models through the real frontend (the sparsity issue's
acceptance point).

The fixtures are the Llama with GQA of ``examples/train_tiny.py`` (seed 0), pruned to
2:4 and to 8:16 by magnitude and fine-tuned with the mask fixed, as float16 weights, and
the INT4 g32 quantisation-aware fine-tune of each (``*-int4qat``: every decoder
projection on the compiler's INT4 grid, in float32):

    python examples/train_tiny.py llama tests/fixtures --sparse 2:4,8:16 --sparse-only
    python examples/train_tiny.py qat tests/fixtures/llama-s0-{2_4,8_16}.npz

Each is exported by torch.onnx, compiled with its own N:M pattern, and its integer
reference (bit-exact with the simulators) compared with onnxruntime on the same float
ONNX over prompts of the model's language (examples/trained_models.py): the frontend
issue's criterion, cosine >= 0.99 at every position and top-1 >= 90%, prefill and 16
decode steps. Measured (docs/compiler.md, "Trained tiny models"): with INT8 weights both
N:M models meet it (over training seeds 0-2 the Llama does on 2 of 3, the miss being
INT8 activation error); with INT4 g32 weights rounded after training neither does
(worst position 0.980 and 0.953, top-1 99.2% and 98.8%; no seed of either family does),
a strict expected failure held to floors; the QAT models compile to exactly their own
weights and meet it with INT4 g32 (worst position 0.9937 and 0.9934).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from trained_models import FIXTURES, Language, lossy_layers, off_grid_layers, plan, train_tiny

from flightforge.compiler.frontend.onnx_import import import_onnx
from flightforge.compiler.frontend.ort_reference import ort_logits, session
from flightforge.compiler.pipeline import CompileOptions, compile_onnx
from flightforge.compiler.quant import accuracy as acc
from flightforge.compiler.quant.plans import parse_plan
from flightforge.compiler.quant.qdecoder import QuantOptions
from flightforge.isa import WPrec
from flightforge.mappings import load_target

pytestmark = pytest.mark.slow

#: (worst position's cosine, mean cosine, top-1) of INT4 g32: the measured figures
#: (2:4: 0.980, 0.9973, 99.2%; 8:16: 0.953, 0.9962, 98.8%) less a margin.
INT4_FLOOR = (0.94, 0.995, 0.97)


SPARSE = ["2_4", "8_16"]  #: the N:M models, fine-tuned with the mask fixed
QAT = [train_tiny.qat_name(n) for n in SPARSE]  #: their INT4 g32 QAT models


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``name -> (pattern, ONNX path, imported program)`` of the fixtures, exported once."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("onnxscript")
    from export_tiny_hf import export_model

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            model, record = train_tiny.load(FIXTURES / f"llama-s0-{name}.npz")
            path = tmp_path_factory.mktemp("trained") / f"llama-{name}.onnx"
            with contextlib.redirect_stdout(io.StringIO()):
                export_model(model, str(path))
            cache[name] = record["sparse"], path, import_onnx(path).program
        return cache[name]

    return get


@pytest.fixture(scope="module", params=SPARSE + QAT)
def trained(request, exported):
    """(pattern, ONNX path, imported program) of one fixture, sparse or QAT."""
    return exported(request.param)


@pytest.fixture(scope="module", params=SPARSE)
def sparse_only(request, exported):
    return exported(request.param)


@pytest.fixture(scope="module", params=QAT)
def qat(request, exported):
    return exported(request.param)


@pytest.fixture(scope="module")
def language():
    return Language.make()


def compile_with(trained, language, bits: int, group: int):
    sparse, path, prog = trained
    spec = parse_plan(plan(prog, bits, group, sparse), f"{bits}-bit {sparse}")
    return compile_onnx(
        str(path),
        load_target("tiny"),
        CompileOptions(
            max_len=acc.MAX_LEN,
            lengths=(acc.PROMPT_LEN,),
            calibration=language.calibration,
            quant=QuantOptions(spec=spec),
        ),
    )


def measured(trained, language, c) -> tuple[np.ndarray, np.ndarray]:
    _, path, prog = trained
    sess = session(path)
    return acc.measure(
        c.quantized,
        lambda ids: ort_logits(sess, ids, prog.kv_heads, prog.head_dim),
        language.prompts,
    )


@pytest.fixture(scope="module")
def int4(exported, language):
    """``name -> (compiled, cosines, top-1s)`` with INT4 g32 weights, compiled once."""
    cache: dict = {}

    def get(trained):
        key = trained[1]
        if key not in cache:
            c = compile_with(trained, language, 4, 32)
            cache[key] = c, *measured(trained, language, c)
        return cache[key]

    return get


def test_the_fixture_is_nm_sparse(trained):
    """Every decoder projection whose K is a multiple of m keeps at most n of m weights."""
    sparse, _, prog = trained
    n, m = (int(x) for x in sparse.split(":"))
    checked = 0
    for name, p in prog.linears.items():
        if name == "lm_head" or p.w.shape[1] % m:
            continue
        kept = (p.w.reshape(p.w.shape[0], -1, m) != 0).sum(axis=2)
        assert kept.max() <= n, f"{name}: {kept.max()} of {m} weights kept"
        checked += 1
    assert checked >= 12  # all 14 at 2:4; the MLP down projections (K = 200) stay dense at n:16


def test_compiling_keeps_the_trained_sparse_weights_exactly(trained, int4):
    """Pruning the N:M model again to its own pattern changes nothing (SparseGPT's pass
    too: tests/test_prune.py)."""
    assert lossy_layers(int4(trained)[0], trained[2]) == []


def test_int8_weights_meet_the_criterion(sparse_only, language):
    cos, top = measured(sparse_only, language, compile_with(sparse_only, language, 8, 0))
    print("\n" + acc.summary(f"INT8 {sparse_only[0]}", cos, top))
    assert acc.meets_criterion(cos, top), acc.summary(f"INT8 {sparse_only[0]}", cos, top)


def test_int4_weights_stay_above_their_floors(sparse_only, int4):
    _, cos, top = int4(sparse_only)
    print("\n" + acc.summary(f"INT4 g32 {sparse_only[0]}", cos, top))
    cos_min, cos_mean, top1 = INT4_FLOOR
    assert cos.min() >= cos_min and cos.mean() >= cos_mean and top.mean() >= top1, acc.summary(
        f"INT4 g32 {sparse_only[0]}", cos, top
    )


@pytest.mark.xfail(
    strict=True,
    reason=(
        "INT4 weight rounding after training moves a trained tiny model's logits by more than "
        "the criterion allows at the worst positions, though top-1 stays at 99%; dense INT4 "
        "fails the same way, and round-to-nearest needs 6-bit weights (docs/compiler.md); "
        "quantisation-aware training meets it (the QAT tests below)"
    ),
)
def test_int4_weights_of_the_trained_model_meet_the_criterion(sparse_only, int4):
    _, cos, top = int4(sparse_only)
    assert acc.meets_criterion(cos, top), acc.summary(f"INT4 g32 {sparse_only[0]}", cos, top)


def test_qat_weights_compile_to_exactly_themselves(qat, int4):
    """The QAT model's projections lie on the compiler's INT4 g32 grid: the compiled
    weights dequantise to exactly the exported float32 ones (the LM head, INT8, aside)."""
    c = int4(qat)[0]
    assert off_grid_layers(c, qat[2]) == []
    assert {name: (p.prec, p.group) for name, p in c.quantized.plans.items()} == {
        name: (WPrec.INT8, 0)
        if name == "lm_head"
        else (WPrec.INT4, 0 if name.endswith("down") else 32)
        for name in qat[2].linears
    }


def test_int4_weights_of_the_qat_model_meet_the_criterion(qat, int4):
    _, cos, top = int4(qat)
    print("\n" + acc.summary(f"INT4 g32 {qat[0]} QAT", cos, top))
    assert acc.meets_criterion(cos, top), acc.summary(f"INT4 g32 {qat[0]} QAT", cos, top)
