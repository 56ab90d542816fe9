"""Float64 oracles shared by the attention tests (independent of slipstream's reference)."""
import torch


def visible(b, s, t, key_padding, causal, window, device="cpu") -> torch.Tensor:
    """Bool [B, 1, S, T] of the op's masks: query i at position T - S + i, key j."""
    pos = torch.arange(s, device=device)[:, None] + t - s
    j = torch.arange(t, device=device)[None, :]
    vis = torch.ones(b, 1, s, t, dtype=torch.bool, device=device)
    if causal:
        vis = vis & (j <= pos)
    if window > 0:
        vis = vis & (j > pos - window)
    return vis if key_padding is None else vis & key_padding[:, None, None, :]


def f64_oracle(q, k, v, key_padding, causal, scale, window=-1, softcap=0.0, keep=None, dropout_p=0.0):
    """Independent float64 attention: repeat_kv, explicit masks, empty rows forced to 0; `keep` (bool
    [B, Hq, S, T]) applies dropout's decisions, scaled by 1 / (1 - dropout_p)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    s = (q @ k.transpose(-1, -2)) * scale
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    vis = visible(q.shape[0], q.shape[2], k.shape[2], key_padding, causal, window, q.device)
    # A finite fill keeps empty rows' softmax (and its backward) NaN-free; the where() then zeroes them.
    p = torch.softmax(s.masked_fill(~vis, -1e300), -1)
    p = torch.where(vis.any(-1, keepdim=True), p, 0.0)
    if keep is not None:
        p = p * keep / (1 - dropout_p)
    return p @ v
