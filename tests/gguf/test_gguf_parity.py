#!/usr/bin/env python3
"""A random transformers LlamaForCausalLM (GQA, untied; and a tied variant) converted to GGUF here
with gguf.GGUFWriter, llama.cpp's tensor names and convert_hf_to_gguf.py's q/k permutation
(LlamaModel.permute), in f32, Q8_0 and Q4_0 (types gguf.quants can quantize).

  * f32: peft.c's logits from the .gguf equal peft.c's from the HF directory (1e-5 relative, per
    position, llama_forward and llama_decode) and transformers' (1e-5);
  * quantized: peft.c's logits from the .gguf equal transformers' on the HF model whose weights
    are replaced by gguf.quants.dequantize of the stored blocks, un-permuted in numpy (1e-5).
Exit 0 pass, 1 fail, 77 skipped (no torch / transformers / gguf).
"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_common import check, driver_logits, failures, permute, rel_err  # noqa: E402

try:
    import gguf
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType as Q
    from transformers import LlamaConfig, LlamaForCausalLM
except Exception as e:  # noqa: BLE001
    print("SKIP: gguf / torch / transformers not importable (%s)" % e)
    sys.exit(77)

TOL = 1e-5
ROPE_THETA = 50000.0  # not the default, so that the metadata key is read


def unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")  # model.layers.N.<module...>.weight
    return "blk.%s.%s.%s" % (parts[2], GGUF_NAMES[".".join(parts[3:-1])], parts[-1])


def to_gguf(model, cfg, path, qtype):
    """Writes model as llama.cpp would; returns {hf name: the f32 values the file holds, HF layout}."""
    w = gguf.GGUFWriter(path, arch="llama")
    hd = cfg.hidden_size // cfg.num_attention_heads
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(ROPE_THETA)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    stored = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        x = t.detach().numpy().astype(np.float32)
        heads = cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads if "k_proj" in name else 0
        if heads:
            x = permute(x, heads)
        if x.ndim == 2 and qtype != Q.F32:
            raw = gguf.quants.quantize(x, qtype)
            w.add_tensor(gguf_name(name), raw, raw_dtype=qtype)
            x = gguf.quants.dequantize(raw, qtype).reshape(x.shape)
        else:
            w.add_tensor(gguf_name(name), x)
        stored[name] = unpermute(x, heads) if heads else x
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


def main():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as td:
        for tied in (False, True):
            cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
                              rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
                              tie_word_embeddings=tied)
            model = LlamaForCausalLM(cfg).eval()
            with torch.no_grad():  # norms away from 1 so that a misplaced norm shows
                for n, p in model.named_parameters():
                    if "norm" in n:
                        p.copy_(1 + 0.3 * torch.randn_like(p))
            hf_dir = os.path.join(td, "hf%d" % tied)
            model.save_pretrained(hf_dir)
            rows = rng.integers(0, cfg.vocab_size, size=(2, 12)).tolist()
            with torch.no_grad():
                ref = model(torch.tensor(rows)).logits.numpy()
            from_dir = driver_logits(hf_dir, rows, td)
            for qtype in ((Q.F32, Q.Q8_0, Q.Q4_0) if not tied else (Q.F32,)):
                path = os.path.join(td, "m%d_%s.gguf" % (tied, qtype.name))
                stored = to_gguf(model, cfg, path, qtype)
                got = driver_logits(path, rows, td)
                tag = "%s%s" % (qtype.name, " tied" if tied else "")
                if qtype == Q.F32:
                    for key in ("logits", "decode_logits"):
                        e = rel_err(got[key], from_dir[key])
                        check(e <= TOL, "%s: %s from .gguf vs from the HF directory: %.2e" % (tag, key, e))
                    e = rel_err(got["logits"], ref)
                    check(e <= TOL, "%s: logits vs transformers: %.2e" % (tag, e))
                else:
                    qm = LlamaForCausalLM(cfg).eval()
                    qm.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in stored.items()}, strict=False)
                    with torch.no_grad():
                        qref = qm(torch.tensor(rows)).logits.numpy()
                    for key in ("logits", "decode_logits"):
                        e = rel_err(got[key], qref)
                        check(e <= TOL, "%s: %s vs transformers on the dequantized weights: %.2e" % (tag, key, e))
                    e = rel_err(got["logits"], ref)
                    print("     %s: vs the unquantized model %.2e (quantization error, not checked)" % (tag, e))
    if failures:
        print("%d failure(s)" % len(failures))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
