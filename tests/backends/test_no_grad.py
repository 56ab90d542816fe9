"""The no-grad twin of a rewritten graph calls the ops' implementations directly: same results, and the
dispatcher's autograd path stays in use whenever gradients are wanted."""
from __future__ import annotations

import torch

import models
import slipstream
from slipstream.backends.no_grad import twin
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
    opt(input_ids=ids, labels=ids).loss.backward()                               # grad: the custom ops
    ref(input_ids=ids, labels=ids).loss.backward()
    for p, q in zip(opt.parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-6)
