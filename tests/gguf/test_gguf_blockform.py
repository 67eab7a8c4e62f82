#!/usr/bin/env python3
"""GGUF linear weights kept in block form as read (`--quantize keep`, the default for a .gguf).

Random Llama GGUFs written here with gguf.GGUFWriter (llama.cpp's names, convert_hf_to_gguf.py's
q/k permutation, the tokenizer of ../shared/models/stories260K-gguf), whose linear-site tensors
are Q8_0, Q4_0 (gguf.quants.quantize), or Q4_K with Q6_K down_proj (random blocks with finite
scales, as test_gguf_dequant.py builds them: gguf cannot quantize K-quants). For each:
  * `peft eval` with the blocks kept equals `--quantize none` (everything dequantized up front)
    and transformers' loss on gguf.quants.dequantize of the stored blocks, un-permuted in numpy
    (rel 2e-6, the 6 decimals eval prints);
  * tests/drivers/driver_train (PEFT_DRIVER_KEEP_BLOCKS) from a LoRA with B != 0: the loss and every
    LoRA gradient equal those on the dequantized model (max |diff| / max |value| per tensor <= 1e-4),
    and so does the adapter after 3 AdamW steps in all but <= 5 % of its values (AdamW's
    lr g / (|g| + 1e-8) turns the summation-order noise of a gradient element within ~1e-6 of the
    largest's of 0 into a step of up to lr, so those few may differ by up to 2 lr per step; the test
    prints how many do: 38..114 of 311296);
  * `peft train` (LoRA from B = 0, 3 steps) has the same loss at every step as on the dequantized
    model, with a lower peak RSS (the process's own ru_maxrss: lower by at least half the f32 bytes
    the blocks save);
  * `peft generate` gives the same greedy ids.
Q4_K only: DoRA on q_proj,v_proj (reads the base weight: those sites get f32 copies) trains with
the dequantized model's losses; PiSSA (needs the f32 base at creation) and `--quantize keep --f16` are
refused with a message naming --quantize none.
Exit 0 pass, 1 fail, 77 skipped (gguf / numpy / torch / transformers / safetensors not
importable, or the stories260K GGUF absent).
"""
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from gguf_common import BIN, BUILD, SHARED, check, failures, permute  # noqa: E402

try:
    import gguf
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType as Q
    from safetensors.numpy import load_file
    from transformers import LlamaConfig, LlamaForCausalLM
except Exception as e:  # noqa: BLE001
    print("SKIP: gguf / numpy / torch / transformers / safetensors not importable (%s)" % e)
    sys.exit(77)
from test_gguf_parity import unpermute  # noqa: E402  (convert_hf_to_gguf.py's q/k order)

STORIES = os.path.join(SHARED, "models", "stories260K-gguf", "stories260K.gguf")
SANITIZED = os.environ.get("PEFT_SANITIZED") == "1"  # CMake: the binaries are built with ASan
C, F, L, NH, NKV, T = 512, 1536, 4, 8, 4, 64  # every in_features a multiple of 256 (K-quant blocks)
def k_blocks(rng, shape, t):
    """Random K-quant blocks [rows, row bytes] with small finite f16 scales (any bit pattern is a block)."""
    block, size = gguf.GGML_QUANT_SIZES[t]
    n = shape[0] * shape[1] // block
    b = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    for off in ((0, 2) if t == Q.Q4_K else (208,)):
        d = (rng.standard_normal(n) * (2e-4 if t == Q.Q4_K else 5e-4)).astype(np.float16)
        b[:, off:off + 2] = d.view(np.uint8).reshape(n, 2)
    return b.reshape(shape[0], shape[1] // block * size)


SITES = {"q_proj": ("attn_q", NH * 64, C), "k_proj": ("attn_k", NKV * 64, C), "v_proj": ("attn_v", NKV * 64, C),
         "o_proj": ("attn_output", C, NH * 64), "gate_proj": ("ffn_gate", F, C), "up_proj": ("ffn_up", F, C),
         "down_proj": ("ffn_down", C, F)}


def write_gguf(path, kind, rng):
    """The model with its site tensors in `kind`; returns (HF state dict of the values the file
    holds, f32 bytes of the sites, their bytes in the file)."""
    src = gguf.GGUFReader(STORIES)
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_context_length(256)
    w.add_embedding_length(C)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_head_count(NH)
    w.add_head_count_kv(NKV)
    w.add_rope_dimension_count(C // NH)
    w.add_layer_norm_rms_eps(1e-5)
    for k, f in src.fields.items():  # the real tokenizer (512 tokens): train needs one
        if not k.startswith("tokenizer."):
            continue
        v = f.contents()
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(k, v, f.types[0], sub_type=f.types[1])
        else:
            w.add_key_value(k, v, f.types[0])
    V = len(src.fields["tokenizer.ggml.tokens"].contents())
    state, f32_bytes, q_bytes = {}, 0, 0

    def dense(name, hf, x):
        w.add_tensor(name, x)
        state[hf] = x

    dense("token_embd.weight", "model.embed_tokens.weight", (rng.standard_normal((V, C)) * 0.5).astype(np.float32))
    dense("output.weight", "lm_head.weight", (rng.standard_normal((V, C)) * 0.05).astype(np.float32))
    dense("output_norm.weight", "model.norm.weight", (1 + 0.2 * rng.standard_normal(C)).astype(np.float32))
    for layer in range(L):
        for norm, hf in (("attn_norm", "input_layernorm"), ("ffn_norm", "post_attention_layernorm")):
            dense("blk.%d.%s.weight" % (layer, norm), "model.layers.%d.%s.weight" % (layer, hf),
                  (1 + 0.2 * rng.standard_normal(C)).astype(np.float32))
        for site, (gname, out, inp) in SITES.items():
            heads = NH if site == "q_proj" else NKV if site == "k_proj" else 0
            if kind == "Q4_K":
                t = Q.Q6_K if site == "down_proj" else Q.Q4_K
                raw = k_blocks(rng, (out, inp), t)
            else:
                t = Q[kind]
                x = (rng.standard_normal((out, inp)) * 0.04).astype(np.float32)
                raw = gguf.quants.quantize(permute(x, heads) if heads else x, t)
            w.add_tensor("blk.%d.%s.weight" % (layer, gname), raw, raw_dtype=t)
            x = gguf.quants.dequantize(raw, t).reshape(out, inp).astype(np.float32)
            mod = "self_attn" if site in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            state["model.layers.%d.%s.%s.weight" % (layer, mod, site)] = unpermute(x, heads) if heads else x
            f32_bytes += out * inp * 4
            q_bytes += raw.nbytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return state, V, f32_bytes, q_bytes


# Linux keeps the pre-exec high-water mark in ru_maxrss, so a child forked from this (torch-sized)
# process would report ours: a bare interpreter forks and execs peft and reports its wait4 rusage.
REAPER = ("import os, sys\npid = os.fork()\nif pid == 0:\n    os.execv(sys.argv[1], sys.argv[1:])\n"
          "_, st, ru = os.wait4(pid, 0)\nsys.stderr.write('\\nPEAK_RSS_KB %d\\n' % ru.ru_maxrss)\n"
          "sys.exit(os.waitstatus_to_exitcode(st))\n")


def run_rss(*args):
    """peft ARGS -> (exit code, stdout, stderr, peak RSS of that process alone in MB)."""
    r = subprocess.run([sys.executable, "-S", "-c", REAPER, BIN] + [str(a) for a in args], capture_output=True, text=True,
                       timeout=600)
    m = re.search(r"\nPEAK_RSS_KB (\d+)\n$", r.stderr)
    return r.returncode, r.stdout, r.stderr[:m.start()] if m else r.stderr, int(m.group(1)) / 1024.0 if m else float("nan")


def loss_in(out):
    m = re.search(r"^loss\s+([0-9.]+) nats/token", out, re.M)
    return float(m.group(1)) if m else None


def hf_loss(state, V, ids):
    cfg = LlamaConfig(vocab_size=V, hidden_size=C, intermediate_size=F, num_hidden_layers=L, num_attention_heads=NH,
                      num_key_value_heads=NKV, max_position_embeddings=256, rms_norm_eps=1e-5,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, strict=True)
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()


def max_rel(a, b, prefix):
    """max over the tensors named prefix* of max |a - b| / max |b|, and their number."""
    keys = [k for k in b if k.startswith(prefix)]
    if set(k for k in a if k.startswith(prefix)) != set(keys):
        return float("inf"), 0
    return max(float(np.abs(a[k] - b[k]).max() / max(np.abs(b[k]).max(), 1e-30)) for k in keys), len(keys)


def train_losses(out_dir):
    with open(os.path.join(out_dir, "train_log.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f if '"loss"' in line]


def driver_run(path, V, td, rng):
    """tests/drivers/driver_train on the GGUF, blocks kept and dequantized, from one LoRA adapter
    whose B is not zero (so every gradient is non-zero from the start): {mode: its outputs}."""
    from safetensors.numpy import save_file
    d = os.path.join(td, "drv")
    os.makedirs(os.path.join(d, "adapter"), exist_ok=True)
    if os.path.lexists(os.path.join(d, "model")):
        os.remove(os.path.join(d, "model"))
    os.symlink(path, os.path.join(d, "model"))  # DIR/model: a .gguf file is a model too
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "bias": "none",
           "target_modules": list(SITES)}
    with open(os.path.join(d, "adapter", "adapter_config.json"), "w") as f:
        json.dump(cfg, f)
    ad = {}
    for layer in range(L):
        for site, (_, out, inp) in SITES.items():
            mod = "self_attn" if site in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            key = "base_model.model.model.layers.%d.%s.%s" % (layer, mod, site)
            ad[key + ".lora_A.weight"] = (rng.standard_normal((8, inp)) * 0.02).astype(np.float32)
            ad[key + ".lora_B.weight"] = (rng.standard_normal((out, 8)) * 0.02).astype(np.float32)
    save_file(ad, os.path.join(d, "adapter", "adapter_model.safetensors"))
    ids = rng.integers(0, V, size=(2, T)).astype(np.int32)
    save_file({"ids": ids, "targets": np.roll(ids, -1, axis=1)}, os.path.join(d, "batch.safetensors"))
    res = {}
    for mode, keep in (("keep", "1"), ("none", "0")):
        env = dict(os.environ, PEFT_DRIVER_TRAIN=d, PEFT_DRIVER_KEEP_BLOCKS=keep, PEFT_DRIVER_STEPS="3", PEFT_DRIVER_LR="1e-3")
        r = subprocess.run([os.path.join(BUILD, "driver_train")], env=env, capture_output=True, text=True, timeout=600)
        if r.returncode:
            check(False, "driver_train (%s): %s" % (mode, r.stderr.strip()[-300:]))
            return None
        res[mode] = load_file(os.path.join(d, "out.safetensors"))
    return res


def train(model, data, out, *extra):
    return run_rss("train", "--model", model, "--data", data, "--out", out, "--rank", 8, "--alpha", 16, "--lr", 1e-3,
                   "--steps", 3, "--batch", 2, "--seq-len", T, "--seed", 1, "--no-progress", "--val-fraction", 0.01, *extra)


def main():
    if not os.path.isfile(STORIES):
        print("SKIP: %s missing" % STORIES)
        return 77
    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="peft_blockform_") as td:
        text = os.path.join(td, "train.txt")
        words = "once upon a time there was a little girl who liked to play in the park with her dog".split()
        with open(text, "w") as f:
            for i in range(400):
                f.write(" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) + ".\n")
        for kind in ("Q8_0", "Q4_0", "Q4_K"):
            path = os.path.join(td, "m_%s.gguf" % kind)
            state, V, f32_bytes, q_bytes = write_gguf(path, kind, rng)
            ids = rng.integers(0, V, size=T).tolist()
            idfile = os.path.join(td, "ids.txt")
            with open(idfile, "w") as f:
                f.write(" ".join(map(str, ids)) + "\n")
            ev = {}
            for mode in ("keep", "none"):
                rc, out, err, rss = run_rss("eval", "--model", path, "--data", idfile, "--ids", "--seq-len", T, "--quantize", mode)
                ev[mode] = (loss_in(out) if rc == 0 else None, rss)
                if rc:
                    check(False, "%s eval --quantize %s: exit %d: %s" % (kind, mode, rc, err.strip()[-300:]))
            ref = hf_loss(state, V, ids)
            (lk, rk), (ln, rn) = ev["keep"], ev["none"]
            if lk is not None and ln is not None:
                tol = 2e-6 + 5e-7 / abs(ref)
                check(abs(lk - ln) / abs(ln) <= tol and abs(lk - ref) / abs(ref) <= tol,
                      "%s eval loss: blocks kept %.6f, dequantized up front %.6f, transformers on the dequantized blocks %.6f"
                      % (kind, lk, ln, ref))
                print("     %s eval peak RSS: kept %.1f MB, dequantized %.1f MB (site weights %.1f MB f32, %.1f MB in the file)"
                      % (kind, rk, rn, f32_bytes / 2**20, q_bytes / 2**20))
            # the default for a .gguf is keep
            rc, out, err, _ = run_rss("eval", "--model", path, "--data", idfile, "--ids", "--seq-len", T)
            check(rc == 0 and loss_in(out) == lk, "%s eval without --quantize keeps the blocks (loss %s)" % (kind, loss_in(out)))
            runs = {}
            for mode in ("keep", "none"):
                out_dir = os.path.join(td, "%s_%s" % (kind, mode))
                rc, out, err, rss = train(path, text, out_dir, "--target", "all-linear", "--quantize", mode)
                runs[mode] = (out_dir, rss) if rc == 0 else None
                if rc:
                    check(False, "%s train --quantize %s: exit %d: %s" % (kind, mode, rc, err.strip()[-300:]))
            if runs["keep"] and runs["none"]:
                lk, ln = train_losses(runs["keep"][0]), train_losses(runs["none"][0])
                check(len(lk) == 3 and all(abs(a - b) <= 2e-6 * abs(b) + 1e-6 for a, b in zip(lk, ln)),
                      "%s peft train, blocks kept vs dequantized: losses %s / %s" % (kind, lk, ln))
                saved = runs["none"][1] - runs["keep"][1]
                need = 0.5 * (f32_bytes - q_bytes) / 2**20
                what = "%s train peak RSS: kept %.1f MB, dequantized %.1f MB (%.1f MB saved, at least %.1f MB expected)" % (
                    kind, runs["keep"][1], runs["none"][1], saved, need)
                if SANITIZED:  # ASan's shadow memory and free quarantine make RSS meaningless
                    print("     (not checked under ASan) " + what)
                else:
                    check(saved >= need, what)
            drv = driver_run(path, V, td, rng)
            if drv:
                ok = abs(float(drv["keep"]["loss"][0]) - float(drv["none"]["loss"][0])) <= 1e-6 * abs(float(drv["none"]["loss"][0]))
                eg, ng = max_rel(drv["keep"], drv["none"], "grad.")
                ef, nf = max_rel(drv["keep"], drv["none"], "final.")
                # The gradients are the oracle: the same f32 products blocked differently (tiles of dequantized
                # rows vs one sgemm), so equal up to summation order (measured 4.6e-6 in Release, 2.8e-5 in the
                # -O0 ASan build). AdamW then moves each element by ~lr g / (|g| + 1e-8), a sign-like step: where
                # |g| is within that noise of 0 the runs may move it differently (up to 2 lr per step), so the
                # adapter is checked by that bound and by how few elements it concerns.
                fk = [k for k in drv["none"] if k.startswith("final.")]
                n_el = sum(drv["none"][k].size for k in fk)
                off = sum(int((np.abs(drv["keep"][k] - drv["none"][k]) > 1e-5 * np.abs(drv["none"][k]).max()).sum()) for k in fk)
                worst = max(float(np.abs(drv["keep"][k] - drv["none"][k]).max()) for k in fk)
                check(ok and eg <= 1e-4 and ng == nf == 2 * 7 * L and off <= 0.05 * n_el and worst <= 2 * 3 * 1e-3,
                      "%s LoRA (B != 0), blocks kept vs dequantized: loss %.6f / %.6f, %d gradients max rel diff %.1e; "
                      "adapter after 3 AdamW steps: %d of %d values differ by more than 1e-5 of the tensor's max (max rel %.1e, "
                      "max abs %.1e <= 2 x 3 steps x lr)" % (kind, float(drv["keep"]["loss"][0]), float(drv["none"]["loss"][0]), ng, eg,
                                                                        off, n_el, ef, worst))
            gen = {}
            for mode in ("keep", "none"):
                rc, out, err, _ = run_rss("generate", "--model", path, "--prompt-ids", ",".join(map(str, ids[:5])), "--max-new", 12,
                                          "--ignore-eos", "--quantize", mode)
                gen[mode] = out.strip() if rc == 0 else "exit %d: %s" % (rc, err.strip()[-200:])
            check(gen["keep"] == gen["none"] and len(gen["keep"].split()) >= 12,
                  "%s generate, blocks kept vs dequantized: %s / %s" % (kind, gen["keep"], gen["none"]))
            if kind != "Q4_K":
                continue
            dora = {}
            for mode in ("keep", "none"):
                out_dir = os.path.join(td, "dora_%s" % mode)
                rc, out, err, _ = train(path, text, out_dir, "--method", "dora", "--target", "q_proj,v_proj", "--quantize", mode)
                dora[mode] = out_dir if rc == 0 else None
                if rc:
                    check(False, "DoRA train --quantize %s: exit %d: %s" % (mode, rc, err.strip()[-300:]))
            if dora["keep"] and dora["none"]:
                lk, ln = train_losses(dora["keep"]), train_losses(dora["none"])
                check(len(lk) == 3 and all(abs(a - b) <= 2e-6 * abs(b) + 1e-6 for a, b in zip(lk, ln)),
                      "Q4_K DoRA (reads W: f32 copies of q/v), blocks kept vs dequantized: losses %s / %s" % (lk, ln))
            rc, out, err, _ = train(path, text, os.path.join(td, "pissa"), "--method", "pissa", "--target", "q_proj")
            check(rc != 0 and "--quantize none" in err, "PiSSA on kept blocks refused: %s" % err.strip()[-200:])
            rc, out, err, _ = run_rss("eval", "--model", path, "--data", idfile, "--ids", "--quantize", "keep", "--f16")
            check(rc != 0 and "--quantize none" in err, "--quantize keep --f16 refused: %s" % err.strip()[-200:])
    if failures:
        print("%d failure(s)" % len(failures))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
