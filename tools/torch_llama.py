#!/usr/bin/env python3
"""Independent pure-PyTorch forward pass of Hugging Face Llama-family causal LMs.

Mirrors transformers' LlamaForCausalLM / MistralForCausalLM / Qwen2ForCausalLM (eager attention)
op for op, written with plain torch ops so autograd works through it, with a linear_hook to put
any method into any linear layer. It is the reference of the parity tests of peft.c's own methods
(tests/parity/, which transformers + HF PEFT do not have; the model itself is checked against
transformers in tests/hf/test_transformers_*.py), of tools/make_demo_model.py and bench/torch_peer.py.

  cfg    = load_config(model_dir)                 # config.json as a dict
  params = load_params(model_dir)                 # HF-named tensors (any dtype)
  logits = forward(cfg, params, ids)              # float32 [B, T, V]

Semantics reproduced:
  * RMSNorm: x.float(); x * rsqrt(mean(x^2) + eps); back to input dtype; times weight.
  * RoPE rotate_half, inv_freq = 1/theta^(arange(0,d,2)/d) in f32, cos/sin cast to activation dtype;
    theta and type from "rope_parameters" (transformers 5) or "rope_scaling" + "rope_theta";
    rope_type "llama3" (= _compute_llama3_parameters); other scaled types are refused.
  * GQA (num_key_value_heads), explicit head_dim, scaling head_dim**-0.5, softmax in float32 then
    cast back, causal mask (no sliding window: sequences are shorter than any window used here).
  * attention_bias (q,k,v,o) and mlp_bias for llama/mistral; q,k,v biases (no o bias) for qwen2.
  * tie_word_embeddings (lm_head = embed_tokens when lm_head.weight is absent / tied).
  * position_ids [B,T] for packed sequences: RoPE uses them, and token t attends only to
    [t - pos[t], t] (its own packed example).

linear_hook(name, x, W, b) lets callers change any linear layer (e.g. add LoRA): `name` is the HF
module name ("model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj", "lm_head").
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from safetensors_io import load_hf_weights  # noqa: E402

_DT = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
       "float64": torch.float64}


# ----------------------------------------------------------------------------- config helpers
def load_config(model_dir):
    with open(os.path.join(model_dir, "config.json")) as f:
        return json.load(f)


def load_params(model_dir, dtype=None):
    p = load_hf_weights(model_dir)
    if dtype is not None:
        p = {k: v.to(dtype) for k, v in p.items()}
    return p


def model_type(cfg):
    mt = cfg.get("model_type")
    if mt:
        return mt
    arch = (cfg.get("architectures") or ["LlamaForCausalLM"])[0]
    return {"MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}.get(arch, "llama")


def dims(cfg):
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or nh
    hd = cfg.get("head_dim") or H // nh
    return H, nh, nkv, hd


def tied(cfg):
    # transformers' PretrainedConfig default is True; LlamaConfig/MistralConfig default False,
    # Qwen2Config default False.
    return bool(cfg.get("tie_word_embeddings", False))


def has_bias(cfg):
    """-> (q/k/v bias, o bias, mlp bias)"""
    mt = model_type(cfg)
    if mt == "qwen2":
        return True, False, False
    ab = bool(cfg.get("attention_bias", False))
    if mt == "mistral":
        return False, False, False
    return ab, ab, bool(cfg.get("mlp_bias", False))


def param_shapes(cfg):
    """Ordered dict of HF tensor name -> shape for this config."""
    H, nh, nkv, hd = dims(cfg)
    I = cfg["intermediate_size"]
    V = cfg["vocab_size"]
    qkvb, ob, mb = has_bias(cfg)
    s = {"model.embed_tokens.weight": (V, H)}
    for i in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % i
        s[p + "input_layernorm.weight"] = (H,)
        s[p + "self_attn.q_proj.weight"] = (nh * hd, H)
        s[p + "self_attn.k_proj.weight"] = (nkv * hd, H)
        s[p + "self_attn.v_proj.weight"] = (nkv * hd, H)
        s[p + "self_attn.o_proj.weight"] = (H, nh * hd)
        if qkvb:
            s[p + "self_attn.q_proj.bias"] = (nh * hd,)
            s[p + "self_attn.k_proj.bias"] = (nkv * hd,)
            s[p + "self_attn.v_proj.bias"] = (nkv * hd,)
        if ob:
            s[p + "self_attn.o_proj.bias"] = (H,)
        s[p + "post_attention_layernorm.weight"] = (H,)
        s[p + "mlp.gate_proj.weight"] = (I, H)
        s[p + "mlp.up_proj.weight"] = (I, H)
        s[p + "mlp.down_proj.weight"] = (H, I)
        if mb:
            s[p + "mlp.gate_proj.bias"] = (I,)
            s[p + "mlp.up_proj.bias"] = (I,)
            s[p + "mlp.down_proj.bias"] = (H,)
    s["model.norm.weight"] = (H,)
    if not tied(cfg):
        s["lm_head.weight"] = (V, H)
    return s


# ----------------------------------------------------------------------------- RoPE
def rope_params(cfg):
    """The RoPE dict: transformers 5's "rope_parameters", or the older "rope_scaling" with a
    top-level "rope_theta" (a non-null rope_scaling wins, as in transformers)."""
    rp = dict(cfg.get("rope_scaling") or cfg.get("rope_parameters") or {})
    rp.setdefault("rope_theta", cfg.get("rope_theta", 10000.0))
    rp.setdefault("rope_type", rp.get("type", "default"))
    return rp


def rope_inv_freq(cfg):
    """inv_freq [head_dim/2] float32, as transformers' ROPE_INIT_FUNCTIONS compute it: "default",
    or "llama3" (= _compute_llama3_parameters)."""
    _, _, _, hd = dims(cfg)
    rp = rope_params(cfg)
    if rp.get("partial_rotary_factor", 1.0) != 1.0:
        raise NotImplementedError("partial_rotary_factor %r" % rp["partial_rotary_factor"])
    base = float(rp["rope_theta"])
    inv_freq = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    if rp["rope_type"] == "default":
        return inv_freq
    if rp["rope_type"] != "llama3":
        raise NotImplementedError("rope_type %r" % rp["rope_type"])
    factor = rp["factor"]
    low_freq_factor = rp["low_freq_factor"]
    high_freq_factor = rp["high_freq_factor"]
    old_context_len = rp.get("original_max_position_embeddings", cfg.get("max_position_embeddings"))
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


def rope_cos_sin(cfg, position_ids, dtype):
    """position_ids [B,T] -> cos, sin [B,T,head_dim] in `dtype` (LlamaRotaryEmbedding.forward)."""
    inv_freq = rope_inv_freq(cfg)
    B = position_ids.shape[0]
    inv_freq_expanded = inv_freq[None, :, None].float().expand(B, -1, 1)
    position_ids_expanded = position_ids[:, None, :].float()
    freqs = (inv_freq_expanded @ position_ids_expanded).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q, k, cos, sin):
    cos = cos.unsqueeze(1)  # [B,1,T,D]
    sin = sin.unsqueeze(1)
    return (q * cos) + (rotate_half(q) * sin), (k * cos) + (rotate_half(k) * sin)


# ----------------------------------------------------------------------------- layers
def rms_norm(x, w, eps):
    input_dtype = x.dtype
    h = x.to(torch.float32)
    variance = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(variance + eps)
    return w * h.to(input_dtype)


def default_linear(name, x, W, b):
    return F.linear(x, W, b)


def attention_mask(cfg, B, T, position_ids, packed, device):
    """Boolean [B,1,T,T] 'allowed' mask."""
    i = torch.arange(T, device=device)
    allowed = (i[None, :] <= i[:, None])[None].expand(B, T, T)  # key j <= query t
    if packed:
        start = i[None, :] - position_ids  # [B,T] first key index of each query's example
        allowed = allowed & (i[None, None, :] >= start[:, :, None])
    return allowed[:, None]


def forward(cfg, params, ids, position_ids=None, linear_hook=None, return_hidden=False,
            inputs_embeds=None):
    """ids: LongTensor [B,T] -> logits float32 [B,T,V].

    Computation dtype = dtype of the params (cast everything to f32 beforehand for f32 math).
    position_ids: optional LongTensor [B,T]; if given, RoPE uses them and attention is restricted
      to the packed example (token t attends keys t-pos[t] .. t).
    linear_hook(name, x, W, b): replaces every linear layer; default F.linear (= x @ W.T + b).
    inputs_embeds: optional [B,T,H] replacing the embedding lookup (ids may then be None).
    """
    lin = linear_hook or default_linear
    H, nh, nkv, hd = dims(cfg)
    eps = cfg.get("rms_norm_eps", 1e-6)
    L = cfg["num_hidden_layers"]
    emb = params["model.embed_tokens.weight"]
    if inputs_embeds is None:
        x = F.embedding(ids, emb)
    else:
        x = inputs_embeds
    B, T = x.shape[0], x.shape[1]
    dtype = x.dtype
    packed = position_ids is not None
    if position_ids is None:
        position_ids = torch.arange(T, device=x.device)[None].expand(B, T)
    position_ids = position_ids.long()
    cos, sin = rope_cos_sin(cfg, position_ids, dtype)
    allowed = attention_mask(cfg, B, T, position_ids, packed, x.device)
    mask_add = torch.zeros(allowed.shape, dtype=dtype)
    mask_add = mask_add.masked_fill(~allowed, torch.finfo(dtype).min)
    scaling = hd ** -0.5
    groups = nh // nkv
    g = params.get

    for li in range(L):
        p = "model.layers.%d." % li
        resid = x
        h = rms_norm(x, params[p + "input_layernorm.weight"], eps)
        a = p + "self_attn."
        q = lin(a + "q_proj", h, params[a + "q_proj.weight"], g(a + "q_proj.bias"))
        k = lin(a + "k_proj", h, params[a + "k_proj.weight"], g(a + "k_proj.bias"))
        v = lin(a + "v_proj", h, params[a + "v_proj.weight"], g(a + "v_proj.bias"))
        q = q.view(B, T, nh, hd).transpose(1, 2)
        k = k.view(B, T, nkv, hd).transpose(1, 2)
        v = v.view(B, T, nkv, hd).transpose(1, 2)
        q, k = apply_rotary(q, k, cos, sin)
        if groups > 1:  # repeat_kv
            k = k[:, :, None].expand(B, nkv, groups, T, hd).reshape(B, nh, T, hd)
            v = v[:, :, None].expand(B, nkv, groups, T, hd).reshape(B, nh, T, hd)
        w = torch.matmul(q, k.transpose(2, 3)) * scaling
        w = w + mask_add
        w = F.softmax(w, dim=-1, dtype=torch.float32).to(q.dtype)
        o = torch.matmul(w, v)
        o = o.transpose(1, 2).reshape(B, T, nh * hd)
        o = lin(a + "o_proj", o, params[a + "o_proj.weight"], g(a + "o_proj.bias"))
        x = resid + o

        resid = x
        h = rms_norm(x, params[p + "post_attention_layernorm.weight"], eps)
        m = p + "mlp."
        gt = lin(m + "gate_proj", h, params[m + "gate_proj.weight"], g(m + "gate_proj.bias"))
        up = lin(m + "up_proj", h, params[m + "up_proj.weight"], g(m + "up_proj.bias"))
        d = lin(m + "down_proj", F.silu(gt) * up, params[m + "down_proj.weight"], g(m + "down_proj.bias"))
        x = resid + d

    x = rms_norm(x, params["model.norm.weight"], eps)
    W = params.get("lm_head.weight")
    if W is None or tied(cfg):
        W = emb
    logits = lin("lm_head", x, W, None).float()
    if return_hidden:
        return logits, x
    return logits


def greedy_generate(cfg, params, prompt, n_new, eos_id=None):
    """Greedy decoding by full recomputation. prompt: list of ids. Returns new ids."""
    ids = list(prompt)
    out = []
    with torch.no_grad():
        for _ in range(n_new):
            lg = forward(cfg, params, torch.tensor([ids]))
            nxt = int(torch.argmax(lg[0, -1]))
            out.append(nxt)
            ids.append(nxt)
            if eos_id is not None and nxt == eos_id:
                break
    return out


def num_params(cfg):
    n = 0
    for s in param_shapes(cfg).values():
        n += int(torch.tensor(s).prod()) if s else 1
    return n


# ----------------------------------------------------------------------------- self-test
def _self_test():
    torch.set_num_threads(2)
    ok = True
    d = "/work/shared/models/tiny-random-llama"
    cfg = load_config(d)
    params = load_params(d)
    assert set(params) == set(param_shapes(cfg)), "tensor names differ from param_shapes()"
    for k, s in param_shapes(cfg).items():
        assert tuple(params[k].shape) == tuple(s), k
    want = [18568, 1727, 8705, 3598, 27426, 4496, 998, 16911]
    got = greedy_generate(cfg, params, [1, 2, 3], 8)
    print("tiny-random-llama greedy f32:", got, "OK" if got == want else "MISMATCH")
    ok &= got == want
    p64 = {k: v.double() for k, v in params.items()}
    got64 = greedy_generate(cfg, p64, [1, 2, 3], 8)
    print("tiny-random-llama greedy f64:", got64, "OK" if got64 == want else "MISMATCH")
    ok &= got64 == want
    ref_top5 = [(18568, 0.298970), (8575, 0.279835), (8144, 0.279177), (11737, 0.278814), (29923, 0.272231)]
    ref_first4 = [0.022118, 0.000329, 0.028078, -0.098116]
    for name, pp in (("f32", params), ("f64", p64)):
        with torch.no_grad():
            lg = forward(cfg, pp, torch.tensor([[1, 2, 3]]))[0, -1].double()
        top = torch.topk(lg, 5)
        top5 = [(int(i), float(v)) for v, i in zip(top.values, top.indices)]
        err = max(abs(v - rv) for (_, v), (_, rv) in zip(top5, ref_top5))
        err = max(err, max(abs(float(lg[i]) - r) for i, r in enumerate(ref_first4)))
        ids_ok = [i for i, _ in top5] == [i for i, _ in ref_top5]
        good = ids_ok and err < 2e-6
        print("first-step logits %s: top5 ids %s, max |err| vs float64 reference %.2e %s"
              % (name, "match" if ids_ok else "DIFFER", err, "OK" if good else "MISMATCH"))
        ok &= good

    # packed position_ids == separate sequences
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 32000, (1, 5), generator=g)
    b = torch.randint(0, 32000, (1, 4), generator=g)
    with torch.no_grad():
        la = forward(cfg, params, a)
        lb = forward(cfg, params, b)
        lp = forward(cfg, params, torch.cat([a, b], 1),
                     position_ids=torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]]))
    e = max(float((lp[:, :5] - la).abs().max()), float((lp[:, 5:] - lb).abs().max()))
    print("packed position_ids vs separate: max |diff| %.2e %s" % (e, "OK" if e < 1e-5 else "MISMATCH"))
    ok &= e < 1e-5

    # llama3 rope: compare against a hand-written loop of the transformers formula
    c3 = dict(cfg, head_dim=8, rope_theta=500000.0,
              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    inv = rope_inv_freq(c3)
    ref = []
    for j in range(4):
        f = 1.0 / (500000.0 ** (2 * j / 8))
        wl = 2 * math.pi / f
        if wl < 8192 / 4.0:
            ref.append(f)
        elif wl > 8192 / 1.0:
            ref.append(f / 8)
        else:
            s = (8192 / wl - 1.0) / (4.0 - 1.0)
            ref.append((1 - s) * f / 8 + s * f)
    e = max(abs(float(x) - r) / r for x, r in zip(inv, ref))
    print("llama3 inv_freq rel err %.2e %s" % (e, "OK" if e < 1e-6 else "MISMATCH"))
    ok &= e < 1e-6
    print("SELF-TEST", "PASSED" if ok else "FAILED")
    return ok


if __name__ == "__main__":
    sys.exit(0 if _self_test() else 1)
