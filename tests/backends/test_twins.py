"""Twins of a rewritten graph skip the dispatcher: the no-grad twin calls the ops' implementations, the grad twin
autograd.Functions made of the ops' own implementations and formulas. Same results, values and gradients."""
from __future__ import annotations

import operator

import pytest
import torch

import models
import slipstream
from slipstream.backends.twins import choose, twin
from slipstream.kernels.registry import IMPLEMENTATIONS


def test_twin_calls_implementations_and_agrees():
    graph = torch.fx.Graph()
    x, w = graph.placeholder("x"), graph.placeholder("w")
    graph.output(graph.call_function(torch.ops.slipstream.rms_norm.default, (x, w, 1e-6, 0.0, True)))
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    fast = twin(gm)
    targets = [n.target for n in fast.graph.nodes if n.op == "call_function"]
    assert targets == [IMPLEMENTATIONS[torch.ops.slipstream.rms_norm.default]]
    a, b = torch.randn(3, 8), torch.randn(8)
    assert torch.equal(fast(a, b), gm(a, b))
    assert twin(torch.fx.symbolic_trace(torch.nn.ReLU())) is None  # nothing to swap: no twin


def test_generate_under_no_grad_and_training_with_grad_both_exact():
    model, ref = models.build("qwen3"), models.build("qwen3")
    opt = slipstream.optimize(model)
    ids = models.token_batch(seq=6)
    greedy = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert torch.equal(opt.generate(ids, **greedy), ref.generate(ids, **greedy))   # no_grad: the twin
    opt.train(), ref.train()
    opt(input_ids=ids, labels=ids).loss.backward()                               # grad: the grad twin
    ref(input_ids=ids, labels=ids).loss.backward()
    for p, q in zip(opt.parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-6)


def _graph(op, n_inputs: int, *constants, outputs: int = 1) -> torch.fx.GraphModule:
    graph = torch.fx.Graph()
    inputs = [graph.placeholder(f"x{i}") for i in range(n_inputs)]
    node = graph.call_function(op, (*inputs, *constants))
    graph.output(node if outputs == 1 else tuple(graph.call_function(operator.getitem, (node, i))
                                                 for i in range(outputs)))
    return torch.fx.GraphModule(torch.nn.Module(), graph)


def _run(fn, inputs: list[torch.Tensor], grad_out: list[torch.Tensor], grad: list[bool]):
    leaves = [t.clone().requires_grad_(g) for t, g in zip(inputs, grad)]
    out = fn(*leaves)
    out = out if isinstance(out, tuple) else (out,)
    torch.autograd.backward(out, grad_out)
    return out, [t.grad for t in leaves]


CASES = {  # op, inputs (shapes), constants, outputs, which inputs want a gradient
    "rms_norm": (torch.ops.slipstream.rms_norm.default, [(3, 5, 97), (97,)], (1e-6, 0.0, True), 1, [True, True]),
    "rope": (torch.ops.slipstream.rope.default, [(2, 4, 7, 16), (2, 2, 7, 16), (2, 7, 16), (2, 7, 16)], (), 2,
             [True, True, False, False]),
    "swiglu": (torch.ops.slipstream.swiglu.default, [(3, 7, 33), (3, 7, 33)], (), 1, [True, True]),
    "attention": (torch.ops.slipstream.attention.default, [(1, 4, 5, 16), (1, 2, 5, 16), (1, 2, 5, 16)],
                  (None, True, 0.25, -1, 0.0, 0.0, 0), 1, [True, True, True]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_grad_twin_gives_the_ops_values_and_gradients(case):
    op, shapes, constants, outputs, wants = CASES[case]
    gm = _graph(op, len(shapes), *constants, outputs=outputs)
    fast = twin(gm, grad=True)
    (target,) = [n.target for n in fast.graph.nodes if n.op == "call_function" and n.target is not operator.getitem]
    assert target.__name__ == f"{case}_grad_twin"
    inputs = [torch.randn(s) for s in shapes]
    out_shapes = [o.shape for o in (gm(*inputs) if outputs > 1 else [gm(*inputs)])]
    grad_out = [torch.randn(s) for s in out_shapes]
    expected, expected_grads = _run(gm, inputs, grad_out, wants)
    got, got_grads = _run(fast, inputs, grad_out, wants)
    for a, b in zip(got + tuple(got_grads), expected + tuple(expected_grads)):
        assert (a is None and b is None) or torch.equal(a, b)
    assert got[0].grad_fn.name() == f"{case}_grad_twinBackward"


def test_grad_twin_keeps_the_dispatcher_for_keyword_nodes():
    graph = torch.fx.Graph()
    x, w = graph.placeholder("x"), graph.placeholder("w")
    graph.output(graph.call_function(torch.ops.slipstream.rms_norm.default, (x, w),
                                     {"eps": 1e-6, "offset": 0.0, "cast_first": True}))
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    assert twin(gm, grad=True) is None
    assert twin(gm) is not None                      # without gradients the implementation takes keywords too


def test_grad_twin_of_an_op_with_tensor_lists():
    # lora_linear's adapters are tensor lists, which autograd.Function would not track inside a list: the twin
    # passes them flattened and must give every adapter tensor its gradient, as the op does.
    op = torch.ops.slipstream.lora_linear.default
    x, base, bias = torch.randn(2, 3, 16), torch.randn(8, 16), torch.randn(8)
    a = [torch.randn(4, 16), torch.randn(2, 16)]
    b = [torch.randn(8, 4), torch.randn(8, 2)]
    graph = torch.fx.Graph()
    ph = [graph.placeholder(f"p{i}") for i in range(7)]
    graph.output(graph.call_function(op, (ph[0], ph[1], None, None, "dense", 0, 8, ph[2], [ph[0], ph[0]],
                                          [ph[3], ph[4]], [ph[5], ph[6]], [2.0, 0.5])))
    gm = torch.fx.GraphModule(torch.nn.Module(), graph)
    fast = twin(gm, grad=True)
    assert [n.target.__name__ for n in fast.graph.nodes if n.op == "call_function"] == ["lora_linear_grad_twin"]
    inputs = [x, base, bias, *a, *b]
    wants = [True, False, True, True, True, True, True]       # a frozen base, as in LoRA training
    grad_out = [torch.randn(2, 3, 8)]
    expected, expected_grads = _run(gm, inputs, grad_out, wants)
    got, got_grads = _run(fast, inputs, grad_out, wants)
    assert torch.equal(got[0], expected[0])
    for g, e, want in zip(got_grads, expected_grads, wants):
        assert (g is None and e is None and not want) or torch.equal(g, e)


def test_choose_picks_the_twin_by_grad_mode():
    gm = _graph(torch.ops.slipstream.rms_norm.default, 2, 1e-6, 0.0, True)
    run = choose(gm)
    x, w = torch.randn(3, 8), torch.randn(8, requires_grad=True)
    with torch.no_grad():
        assert run(x, w).grad_fn is None
    assert run(x, w).grad_fn.name() == "rms_norm_grad_twinBackward"


def test_eager_backward_calls_backward_implementations_directly():
    # An eager backward runs with gradients off on plain tensors: the formulas call the backward ops' code directly.
    gm = _graph(torch.ops.slipstream.rms_norm.default, 2, 1e-6, 0.0, True)
    inputs = [torch.randn(3, 8), torch.randn(8)]
    for fn in (gm, twin(gm, grad=True)):
        out, grads = _run(fn, inputs, [torch.randn(3, 8)], [True, True])
        with torch.profiler.profile() as prof:
            _run(fn, inputs, [torch.randn(3, 8)], [True, True])
        names = {e.name for e in prof.events() if e.name.startswith("slipstream::")}
        assert "slipstream::rms_norm_backward" not in names
