"""The ONNX frontend on tiny exports in each exporter's style (tests/onnx_builders.py).

Per style: the recovered DecoderProgram reproduces onnxruntime's float logits; compiled
for ``tiny``, the integer reference tracks onnxruntime over a prefill and 16 decode steps
(compiler/quant/accuracy.py). Bad input gives errors naming the node, op, layer or file. Real
torch.onnx exports of Hugging Face models run when torch and transformers are installed
(marked slow).

Accuracy figures:
``python -m pytest --run-slow tests/test_onnx_import.py -q -s -k "accuracy or acceptance or torch"``
prints, per style, the minimum and mean cosine and the top-1 agreement.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx_builders as ob
import pytest
from onnx import helper

from flightforge.compiler.frontend.onnx_graph import FrontendError
from flightforge.compiler.frontend.onnx_import import import_onnx, load_onnx
from flightforge.compiler.frontend.ort_reference import ort_logits, session
from flightforge.compiler.graph import DecoderShape, random_decoder
from flightforge.compiler.interpret import FloatState, run_float
from flightforge.compiler.pipeline import (
    CompileOptions,
    calibration_prompts,
    compile_decoder,
    compile_onnx,
)
from flightforge.compiler.quant import accuracy as acc
from flightforge.compiler.quant.calibrate import calibrate
from flightforge.compiler.quant.qdecoder import QuantOptions, quantize_decoder
from flightforge.mappings import load_target

LLAMA = DecoderShape(2, 96, 6, 2, 16, 200, 300, "swiglu", True)
GPT2 = DecoderShape(2, 96, 6, 6, 16, 200, 300, "gelu_tanh", False)
OPT = DecoderShape(2, 96, 6, 6, 16, 200, 300, "relu", False)
LAYERED = dict(norm="layer", bias=True, learned_positions=64)

STYLES = {
    "llama": (LLAMA, {}, lambda p, f: ob.llama(p, 6, f)),
    "llama-trilu-div": (LLAMA, {}, lambda p, f: ob.llama(p, 6, f, mask="trilu", norm_style="div")),
    "llama-optimum-past": (LLAMA, {}, lambda p, f: ob.llama(p, 6, f, past=True)),
    "gpt2": (GPT2, LAYERED, lambda p, f: ob.gpt2(p, 6, f)),
    "opt": (OPT, LAYERED, lambda p, f: ob.opt(p, 6, f)),
    "genai": (LLAMA, {}, lambda p, f: ob.genai(p, 6, f)),
    "genai-packed": (LLAMA, {}, lambda p, f: ob.genai(p, 6, f, packed=True)),
    "msrope-qdq": (LLAMA, {}, lambda p, f: ob.msrope(p, 6, f)),
}


@pytest.fixture(scope="module", params=sorted(STYLES))
def exported(request, tmp_path_factory):
    shape, kw, build = STYLES[request.param]
    src = random_decoder(shape, **kw)
    path = build(src, tmp_path_factory.mktemp("onnx") / f"{request.param}.onnx")
    return request.param, src, path, import_onnx(path)


def test_structure_is_recovered(exported):
    name, src, _, imp = exported
    shape, _, _ = STYLES[name]
    assert imp.summary.shape == shape
    prog = imp.program
    assert (prog.rope_theta is not None) == shape.rope
    if name == "opt":
        assert prog.position_offset == 2 and prog.n_positions == 66
    elif name == "gpt2":
        assert prog.position_offset == 0 and prog.n_positions == 64
    if name in ("llama", "gpt2", "opt"):  # float weights: the source's, up to float32
        for key, lp in src.linears.items():
            got = prog.linears[key]
            if key.endswith(".q") and name != "gpt2":
                continue  # the query carries the score scale folded in
            np.testing.assert_allclose(got.w, lp.w, atol=1e-6, err_msg=key)


def test_float_program_reproduces_onnxruntime(exported):
    name, src, path, imp = exported
    prog = imp.program
    ids = np.random.default_rng(1).integers(0, prog.vocab, size=11)  # not the probe's length
    want = ort_logits(session(path), ids, prog.kv_heads, prog.head_dim)
    got = run_float(prog, ids, 0, FloatState())
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 1e-4, (name, err)
    if name in ("llama", "gpt2", "opt"):  # and the source program it was written from
        assert np.abs(run_float(src, ids, 0, FloatState()) - want).max() / np.abs(want).max() < 1e-4


def accuracy(prog, qd, sess) -> tuple[np.ndarray, np.ndarray]:
    """Per-position cosine and top-1 agreement of the integer reference vs onnxruntime:
    4 prompts x (16 prefill + 16 greedy decode steps of onnxruntime's own tokens)."""
    return acc.measure(qd, lambda ids: ort_logits(sess, ids, prog.kv_heads, prog.head_dim))


#: Styles whose test graph meets the acceptance criterion (cosine >= 0.99 at every
#: position, top-1 >= 90%). The random Llama-style graphs do not, and random GPT-2 and OPT
#: graphs meet it on about half of the seeds: docs/frontend.md, "Accuracy", and
#: docs/compiler.md give the measurements and the reason.
MEETS_CRITERION = {"gpt2", "opt"}
#: (worst position's cosine, mean cosine, top-1) every style's graph stays above, seeds 1-4
#: of the builder styles included (test_accuracy_over_seeds): the weakest measured figures
#: less a margin of a few near-tie positions. A misread pattern gives far lower figures.
FLOORS = {"gpt2": (0.985, 0.997, 0.85), "opt": (0.98, 0.997, 0.85)}
LLAMA_FLOOR = (0.93, 0.990, 0.78)


def test_integer_reference_accuracy_against_onnxruntime(exported):
    name, _, path, imp = exported
    prog = imp.program
    c = compile_decoder(prog, load_target("tiny"), CompileOptions(max_len=acc.MAX_LEN))
    cos, top = accuracy(prog, c.quantized, session(path))
    print("\n" + acc.summary(name, cos, top))
    cos_min, cos_mean, top1 = FLOORS.get(name, LLAMA_FLOOR)
    assert cos.min() >= cos_min and cos.mean() >= cos_mean and top.mean() >= top1, acc.summary(
        name, cos, top
    )


def test_acceptance_criterion_against_onnxruntime(exported, request):
    """Cosine >= 0.99 at every position and top-1 >= 90%, prefill and 16 decode steps."""
    name, _, path, imp = exported
    if name not in MEETS_CRITERION:
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason=(
                    "random Llama-style graphs amplify INT8 activation noise through nearly "
                    "one-hot "
                    "attention beyond the criterion with INT8 activations; 16-bit ones meet it "
                    "(test_acceptance_criterion_with_16_bit_activations, docs/frontend.md)"
                ),
            )
        )
    prog = imp.program
    qd = quantize_decoder(
        prog, calibrate(prog, calibration_prompts(prog, CompileOptions(max_len=acc.MAX_LEN)))
    )
    cos, top = accuracy(prog, qd, session(path))
    assert acc.meets_criterion(cos, top), acc.summary(name, cos, top)


def test_acceptance_criterion_with_16_bit_activations(exported):
    """Every style meets the criterion with the engine's inputs at 16 bits (two INT8
    halves, docs/compiler.md), the Llama-style graphs and int4 MatMulNBits included."""
    name, _, path, imp = exported
    prog = imp.program
    quant = QuantOptions(act_bits=16)
    options = CompileOptions(max_len=acc.MAX_LEN, quant=quant)
    qd = quantize_decoder(prog, calibrate(prog, calibration_prompts(prog, options)), quant)
    cos, top = accuracy(prog, qd, session(path))
    print("\n" + acc.summary(f"{name} A16", cos, top))
    assert acc.meets_criterion(cos, top), acc.summary(f"{name} A16", cos, top)


@pytest.mark.parametrize("style", ["llama", "gpt2", "opt"])
def test_accuracy_over_seeds(style, tmp_path):
    """Graphs of seeds 1-4 (the test graphs are seed 0) stay above the style's floors."""
    shape, kw, build = STYLES[style]
    cos_min, cos_mean, top1 = FLOORS.get(style, LLAMA_FLOOR)
    options = CompileOptions(max_len=acc.MAX_LEN)
    for seed in range(1, 5):
        path = build(random_decoder(shape, seed=seed, **kw), tmp_path / f"{style}{seed}.onnx")
        prog = import_onnx(path).program
        stats = calibrate(prog, calibration_prompts(prog, options))
        qd = quantize_decoder(prog, stats, options.quant)
        cos, top = accuracy(prog, qd, session(path))
        msg = acc.summary(f"{style} seed {seed}", cos, top)
        print("\n" + msg)
        assert cos.min() >= cos_min and cos.mean() >= cos_mean and top.mean() >= top1, msg


def test_compile_onnx_records_the_model(tmp_path):
    path = ob.llama(random_decoder(LLAMA), 6, tmp_path / "m.onnx")
    c = compile_onnx(str(path), load_target("tiny"), CompileOptions(max_len=8))
    meta = c.program.metadata
    assert meta["model"] == str(path)
    assert meta["frontend"]["kv_heads"] == 2 and meta["frontend"]["rope_theta"] == 10000.0


def test_load_onnx_returns_the_program(tmp_path):
    path = ob.opt(random_decoder(OPT, **LAYERED), 6, tmp_path / "m.onnx")
    assert load_onnx(path).layers == 2


# ------------------------------------------------------------------------ bad input


@pytest.fixture
def llama_model(tmp_path):
    path = ob.llama(
        random_decoder(DecoderShape(1, 32, 2, 2, 16, 48, 50, "swiglu", True)),
        2,
        tmp_path / "m.onnx",
    )
    return path, onnx.load(str(path))


def _insert_after(
    model: onnx.ModelProto, op_type: str, index: int, new: list[onnx.NodeProto], out: str
) -> None:
    """Insert ``new`` after the ``index``-th node of ``op_type``, rewiring its readers to
    ``out``."""
    nodes = list(model.graph.node)
    target = [n for n in nodes if n.op_type == op_type][index]
    src = target.output[0]
    for n in nodes:
        for k, i in enumerate(n.input):
            if i == src:
                n.input[k] = out
    new[0].input[0] = src
    pos = nodes.index(target) + 1
    del model.graph.node[:]
    model.graph.node.extend(nodes[:pos] + new + nodes[pos:])


def test_unsupported_operator_is_named_with_its_node_and_layer(llama_model, tmp_path):
    _, m = llama_model
    k = helper.make_tensor("k", onnx.TensorProto.INT64, [1], [48])
    m.graph.initializer.append(k)
    topk = helper.make_node(
        "TopK", ["x", "k"], ["topk_v", "topk_i"], name="suspicious_topk", axis=-1
    )
    # after the gate's Sigmoid: the MLP of layer 0
    _insert_after(m, "Sigmoid", 0, [topk], "topk_v")
    path = tmp_path / "topk.onnx"
    onnx.save(m, str(path))
    with pytest.raises(
        FrontendError,
        match=r"node 'suspicious_topk' \(TopK, domain 'ai.onnx', "
        r"opset 18\) in layer 0: no pattern uses this operator",
    ):
        import_onnx(path)


def test_unsupported_plumbing_operator_is_named(llama_model, tmp_path):
    _, m = llama_model
    # a TopK on the positions (Range) that feed the mask and the rotary tables
    k = helper.make_tensor("k2", onnx.TensorProto.INT64, [1], [1])
    topk = helper.make_node("TopK", ["x", "k2"], ["tk_v", "tk_i"], name="mask_topk")
    m.graph.initializer.append(k)
    _insert_after(m, "Range", 0, [topk], "tk_v")
    path = tmp_path / "plumb.onnx"
    onnx.save(m, str(path))
    with pytest.raises(
        FrontendError,
        match=r"node 'mask_topk' \(TopK.*not one of the recognised "
        r"shape/mask/position operators",
    ):
        import_onnx(path)


def test_attention_without_causal_mask_is_refused(llama_model, tmp_path):
    _, m = llama_model
    for n in m.graph.node:  # scores + mask -> scores + 0
        if n.op_type == "Add" and any(
            o.op_type == "Where" and o.output[0] in n.input for o in m.graph.node
        ):
            n.input[1] = "zero_mask"
    m.graph.initializer.append(helper.make_tensor("zero_mask", onnx.TensorProto.FLOAT, [], [0.0]))
    path = tmp_path / "nomask.onnx"
    onnx.save(m, str(path))
    with pytest.raises(
        FrontendError, match="in layer 0: the attention probabilities are not a causal softmax"
    ):
        import_onnx(path)


def test_external_data_outside_the_model_folder_is_refused(llama_model, tmp_path):
    _, m = llama_model
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.ClearField("int64_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "../../etc/passwd"), ("offset", "0"), ("length", "4")):
        e = t.external_data.add()
        e.key, e.value = k, v
    path = tmp_path / "evil.onnx"
    onnx.save(m, str(path))
    with pytest.raises(
        FrontendError,
        match=r"external data at '\.\./\.\./etc/passwd', outside "
        r"the model's folder .*; refused",
    ):
        import_onnx(path)


def test_external_data_inside_the_folder_loads(llama_model, tmp_path):
    _, m = llama_model
    path = tmp_path / "ext" / "m.onnx"
    path.parent.mkdir()
    onnx.save(
        m,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (path.parent / "weights.bin").stat().st_size > 0
    assert import_onnx(path).summary.shape.layers == 1


def test_truncated_file_is_an_error_naming_it(llama_model, tmp_path):
    src, _ = llama_model
    data = src.read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FrontendError, match=rf"{path}: .*(truncated|corrupt)"):
        import_onnx(path)


def test_missing_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(FrontendError, match=r"nope\.onnx: no such file"):
        import_onnx(tmp_path / "nope.onnx")


# ------------------------------------------------------------------- real exports


@pytest.mark.slow
@pytest.mark.parametrize(
    "family,opset", [("llama", 18), ("opt", 18), ("gpt2", 18), ("llama", 23), ("gpt2", 23)]
)
def test_torch_dynamo_export_of_hugging_face_models(family, opset, tmp_path):
    """At opset 23 the exporter writes ONNX Attention, RotaryEmbedding and RMSNormalization
    nodes instead of their decomposed patterns."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("onnxscript")
    from export_tiny_hf import export_model

    torch.manual_seed(0)
    if family == "llama":
        model = transformers.LlamaForCausalLM(
            transformers.LlamaConfig(
                vocab_size=300,
                hidden_size=96,
                intermediate_size=200,
                num_hidden_layers=2,
                num_attention_heads=6,
                num_key_value_heads=2,
                max_position_embeddings=128,
            )
        )
        want = DecoderShape(2, 96, 6, 2, 16, 200, 300, "swiglu", True)
    elif family == "opt":
        model = transformers.OPTForCausalLM(
            transformers.OPTConfig(
                vocab_size=300,
                hidden_size=96,
                num_hidden_layers=2,
                ffn_dim=200,
                num_attention_heads=6,
                max_position_embeddings=64,
                word_embed_proj_dim=96,
            )
        )
        want = DecoderShape(2, 96, 6, 6, 16, 200, 300, "relu", False)
    else:
        model = transformers.GPT2LMHeadModel(
            transformers.GPT2Config(
                vocab_size=300, n_embd=96, n_layer=2, n_head=6, n_positions=64, n_inner=200
            )
        )
        want = DecoderShape(2, 96, 6, 6, 16, 200, 300, "gelu_tanh", False)
    path = tmp_path / f"{family}.onnx"
    export_model(model, str(path), opset)
    if opset >= 23:
        import onnx

        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert "Attention" in ops and (family != "llama" or "RotaryEmbedding" in ops), ops
    imp = import_onnx(path)
    assert imp.summary.shape == want
    prog = imp.program
    sess = session(path)
    ids = np.random.default_rng(2).integers(0, 300, size=12)
    want_logits = ort_logits(sess, ids, prog.kv_heads, prog.head_dim)
    got = run_float(prog, ids, 0, FloatState())
    assert np.abs(got - want_logits).max() / np.abs(want_logits).max() < 1e-4
    c = compile_decoder(prog, load_target("tiny"), CompileOptions(max_len=acc.MAX_LEN))
    cos, top = accuracy(prog, c.quantized, sess)
    print("\n" + acc.summary(f"torch {family}", cos, top))
    assert acc.meets_criterion(cos, top), acc.summary(f"torch {family}", cos, top)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "opt", "gpt2"])
def test_torch_exports_at_init_range_0_2_meet_the_criterion(family, tmp_path):
    """The frontend issue's acceptance measurement: torch.onnx exports of tiny Hugging
    Face models initialised at range 0.2, compiled with 16-bit activations, against
    onnxruntime (INT8 activations miss it for Llama: docs/frontend.md)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("onnxscript")
    from export_tiny_hf import export

    path = tmp_path / f"{family}.onnx"
    export(family, str(path), 0.2, seed=0)
    prog = import_onnx(path).program
    options = CompileOptions(max_len=acc.MAX_LEN, quant=QuantOptions(act_bits=16))
    c = compile_decoder(prog, load_target("tiny"), options)
    cos, top = accuracy(prog, c.quantized, session(path))
    print("\n" + acc.summary(f"torch {family} init 0.2 A16", cos, top))
    assert acc.meets_criterion(cos, top), acc.summary(f"torch {family} init 0.2 A16", cos, top)


def test_fit_theta_recovers_the_base():
    from flightforge.compiler.frontend.probe import fit_theta

    for theta in (10000.0, 500000.0):
        inv = 1.0 / theta ** (np.arange(8) * 2 / 16)
        ang = np.arange(5)[:, None] * inv
        assert (
            fit_theta(np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32), 16) == theta
        )
    assert math.isclose(fit_theta(np.cos(ang), np.sin(ang), 16), 500000.0)
