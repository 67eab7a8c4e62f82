#!/usr/bin/env python3
"""`peft export --gguf`: a LoRA trained on stories260K.gguf as llama.cpp's GGUF LoRA, and the
merged model as one GGUF, checked against llama.cpp itself.

Oracles: ggml-org's `gguf` package reading the files (keys, value types, tensor names, ne,
types, values against the adapter's safetensors with convert_hf_to_gguf.py's q/k permutation
written out here in numpy); llama-cpp-python (llama.cpp built from source) loading
stories260K.gguf plus the exported LoRA, or the exported merged GGUF, whose logits must match
peft.c's own logits with the adapter (tests/drivers/driver_logits.c) to 1e-4 relative in f32
(llama.cpp with an f32 KV cache; f16 tensors: 1e-2, q8_0: 3e-2) and whose greedy ids must equal `peft generate --adapter`'s.
  * plain LoRA (all-linear, r 4, alpha 8): adapter.lora.alpha = 8, lora_a ne {in, r}, lora_b
    ne {r, out}, lora_b rows of q/k permuted, values equal to the adapter's;
  * rsLoRA with a rank pattern: alpha written as alpha * sqrt(r), the other sites' scale
    folded into lora_b; llama.cpp reproduces peft.c;
  * --merged: every key of the base kept with its value, unchanged tensors byte for byte;
    with no adapter the tensors are the base's exactly;
  * --type f16 (and q8_0, where the build has it: lora_b rows of r = 4 values fall back to f16
    as convert_hf_to_gguf.py does);
  * DoRA, IA3 and prompt-tuning adapters are refused naming the method; an adapter of another
    base is refused.
Exit 0 pass, 1 fail, 77 skipped (no file in ../shared, no gguf / llama_cpp / numpy).
"""
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_common import BUILD, SHARED, check, failures, peft, permute, rel_err  # noqa: E402

GGUF = os.path.join(SHARED, "models", "stories260K-gguf", "stories260K.gguf")
TEXT = os.path.join(SHARED, "data", "tinyshakespeare", "input.txt")
for path in (GGUF, TEXT):
    if not os.path.exists(path):
        print("SKIP: %s not found" % path)
        sys.exit(77)
try:
    import gguf
    import numpy as np
    from llama_cpp import Llama
    from safetensors.numpy import load_file
except Exception as e:  # noqa: BLE001
    print("SKIP: gguf / numpy / llama_cpp / safetensors not importable (%s)" % e)
    sys.exit(77)

HF_TO_GGUF = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def peft_logits(rows, adapter, td):
    ids = os.path.join(td, "ids.txt")
    with open(ids, "w") as f:
        f.write("\n".join(" ".join(map(str, r)) for r in rows) + "\n")
    out = os.path.join(td, "logits.safetensors")
    env = dict(os.environ, PEFT_DRIVER_MODEL=GGUF, PEFT_DRIVER_IDS=ids, PEFT_DRIVER_OUT=out, PEFT_DRIVER_MODE="forward")
    env.pop("PEFT_DRIVER_ADAPTER", None)
    if adapter:
        env["PEFT_DRIVER_ADAPTER"] = adapter
    r = subprocess.run([os.path.join(BUILD, "driver_logits")], env=env, capture_output=True, timeout=300)
    if r.returncode:
        raise RuntimeError("driver_logits: " + r.stderr.decode())
    return load_file(out)["logits"]


def llama(model, lora=None):
    kw = {"lora_path": lora} if lora else {}
    # an f32 KV cache (type 0): llama.cpp's default f16 cache alone moves the logits ~5e-4
    return Llama(model_path=model, n_ctx=128, logits_all=True, verbose=False, n_threads=2, seed=0, type_k=0, type_v=0, **kw)


def llama_logits(llm, row):
    llm.reset()
    llm.eval(row)
    return np.array(llm.scores[: len(row)], dtype=np.float64)


def llama_greedy(llm, prompt, n):
    llm.reset()
    ids = list(prompt)
    llm.eval(ids)
    out = []
    for _ in range(n):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(nxt)
        llm.eval([nxt])
    return out


def peft_greedy(adapter, n):
    rc, out, err = peft("generate", "--model", GGUF, "--adapter", adapter, "--prompt-ids", 1, "--max-new", n)
    return [int(x) for x in out.split()] if rc == 0 else err


def fields(path):
    r = gguf.GGUFReader(path)
    return r, {k: f for k, f in r.fields.items() if not k.startswith("GGUF.")}


def train(td, name, *extra):
    out = os.path.join(td, name)
    rc, o, err = peft("train", "--model", GGUF, "--data", os.path.join(td, "train.txt"), "--out", out, "--steps", 6, "--batch", 2,
                      "--seq-len", 48, "--lr", "2e-2", "--rank", 4, "--alpha", 8, *extra)
    check(rc == 0, "peft train %s %s%s" % (name, " ".join(map(str, extra)), "" if rc == 0 else ": " + err.strip()[-300:]))
    return out


def check_lora_file(path, adapter, meta, want_alpha, rank_of):
    r, f = fields(path)
    check(f["general.type"].contents() == "adapter" and f["adapter.type"].contents() == "lora" and
          f["general.architecture"].contents() == "llama", "%s: general.type adapter, adapter.type lora, architecture llama" % os.path.basename(path))
    a = f["adapter.lora.alpha"]
    check(a.types == [gguf.GGUFValueType.FLOAT32] and abs(a.contents() - want_alpha) <= 1e-5 * want_alpha,
          "adapter.lora.alpha is an f32 %.6g (want %.6g)" % (a.contents(), want_alpha))
    sd = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    tensors = {t.name: t for t in r.tensors}
    want = set()
    n_head, n_kv = meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]
    shapes_ok = values_ok = True
    for key, A in sd.items():
        if ".lora_A." not in key:
            continue
        mod = key[len("base_model.model."):-len(".lora_A.weight")]
        layer, hf = int(mod.split(".")[2]), ".".join(mod.split(".")[3:])
        base = "blk.%d.%s.weight" % (layer, HF_TO_GGUF[hf])
        want |= {base + ".lora_a", base + ".lora_b"}
        ta, tb = tensors.get(base + ".lora_a"), tensors.get(base + ".lora_b")
        if ta is None or tb is None:
            continue
        B = sd[key.replace("lora_A", "lora_B")]
        r_ = A.shape[0]
        shapes_ok &= list(ta.shape) == [A.shape[1], r_] and list(tb.shape) == [r_, B.shape[0]] and \
            ta.tensor_type == gguf.GGMLQuantizationType.F32 and tb.tensor_type == gguf.GGMLQuantizationType.F32
        if hf.endswith("q_proj") or hf.endswith("k_proj"):
            B = permute(B, n_head if hf.endswith("q_proj") else n_kv)
        ratio = rank_of(hf)
        values_ok &= np.array_equal(np.array(ta.data).reshape(A.shape), A) and \
            np.allclose(np.array(tb.data).reshape(B.shape), B * ratio, rtol=1e-6, atol=0)
    check(set(tensors) == want and len(want) > 0, "%d tensors named <base tensor>.lora_a / .lora_b" % len(tensors))
    check(shapes_ok, "lora_a ne {in, r}, lora_b ne {r, out}, F32")
    check(values_ok, "lora_a equals lora_A; lora_b equals lora_B (q/k rows permuted, pattern scale folded in)")


def main():
    meta = {k: f.contents() for k, f in gguf.GGUFReader(GGUF).fields.items() if not k.startswith("GGUF.")}
    with tempfile.TemporaryDirectory() as td:
        with open(TEXT) as f, open(os.path.join(td, "train.txt"), "w") as g:
            g.write(f.read(20000))
        lora = train(td, "lora", "--target", "all-linear")
        rs = train(td, "rslora", "--target", "q_proj,k_proj,v_proj,o_proj", "--rslora", "--rank-pattern", "o_proj=2")
        rc, o, err = peft("tokenize", "--model", GGUF, "--text", "First Citizen: Before we proceed any further, hear me speak.")
        row = [int(x) for x in o.replace(",", " ").split()][:32]
        base_llm = llama(GGUF)
        base_logits = llama_logits(base_llm, row)

        # plain LoRA
        out = os.path.join(td, "lora.gguf")
        rc, o, err = peft("export", "--model", GGUF, "--adapter", lora, "--gguf", out)
        check(rc == 0, "export --gguf (%s)" % (o.strip() if rc == 0 else err.strip()))
        if rc == 0:
            check_lora_file(out, lora, meta, 8.0, lambda hf: 1.0)
            mine = peft_logits([row], lora, td)[0]
            ref = llama_logits(llama(GGUF, out), row)
            e, moved = rel_err(ref, mine), rel_err(base_logits, mine)
            check(e <= 1e-4 and moved > 1e-2, "llama.cpp base + GGUF LoRA logits vs peft.c's: max rel err %.2e (the adapter moves them %.2e)" % (e, moved))
            want = peft_greedy(lora, 40)
            got = llama_greedy(llama(GGUF, out), [1], 40)
            check(got == want, "llama.cpp's greedy ids with the LoRA equal peft generate --adapter's (%d ids)" % len(got))

        # rsLoRA + rank pattern: alpha * sqrt(4) written, o_proj (r 2, s = 8/sqrt(2)) folded into lora_b
        out_rs = os.path.join(td, "rslora.gguf")
        rc, o, err = peft("export", "--model", GGUF, "--adapter", rs, "--gguf", out_rs)
        check(rc == 0, "export rsLoRA (%s)" % (o.strip() if rc == 0 else err.strip()))
        if rc == 0:
            check_lora_file(out_rs, rs, meta, 16.0, lambda hf: (8 / 2 ** 0.5) * 2 / 16.0 if hf.endswith("o_proj") else 1.0)
            e = rel_err(llama_logits(llama(GGUF, out_rs), row), peft_logits([row], rs, td)[0])
            check(e <= 1e-4, "rsLoRA: llama.cpp vs peft.c logits max rel err %.2e" % e)

        # merged
        merged = os.path.join(td, "merged.gguf")
        rc, o, err = peft("export", "--model", GGUF, "--adapter", lora, "--merged", "--gguf", merged)
        check(rc == 0, "export --merged (%s)" % (o.strip() if rc == 0 else err.strip()))
        if rc == 0:
            mr, mf = fields(merged)
            br, bf = fields(GGUF)
            same_kv = set(mf) == set(bf) and all(mf[k].types == bf[k].types and str(mf[k].contents()) == str(bf[k].contents()) for k in bf)
            check(same_kv, "merged GGUF keeps every key of the base (%d) with its type and value" % len(bf))
            bt = {t.name: t for t in br.tensors}
            kept = [t.name for t in mr.tensors if "norm" in t.name or t.name == "token_embd.weight"]
            check(all(np.array_equal(np.array(t.data), np.array(bt[t.name].data)) for t in mr.tensors if t.name in kept) and len(kept) > 0,
                  "tensors the adapter does not touch are the base's byte for byte (%d)" % len(kept))
            mine = peft_logits([row], lora, td)[0]
            e = rel_err(llama_logits(llama(merged), row), mine)
            check(e <= 1e-4, "llama.cpp on the merged GGUF vs peft.c with the adapter: max rel err %.2e" % e)
            check(llama_greedy(llama(merged), [1], 40) == peft_greedy(lora, 40), "greedy ids of the merged GGUF equal peft.c's")
        plain = os.path.join(td, "plain.gguf")
        rc, o, err = peft("export", "--model", GGUF, "--merged", "--gguf", plain)
        if rc == 0:
            pr, _ = fields(plain)
            bt = {t.name: t for t in gguf.GGUFReader(GGUF).tensors}
            same = all(np.array_equal(np.array(t.data), np.array(bt[t.name].data)) and t.tensor_type == bt[t.name].tensor_type for t in pr.tensors)
            check(same and len(pr.tensors) == len(bt), "--merged without an adapter: every tensor the base's exactly")
            check(open(plain, "rb").read() == open(GGUF, "rb").read(), "... and the file is stories260K.gguf byte for byte (same keys, order, alignment)")
        else:
            check(False, "export --merged without adapter: " + err.strip())

        # 16-bit and 8-bit tensors
        for typ, tol in (("f16", 1e-2), ("q8_0", 3e-2)):
            out_t = os.path.join(td, "lora-%s.gguf" % typ)
            rc, o, err = peft("export", "--model", GGUF, "--adapter", lora, "--gguf", out_t, "--type", typ)
            if typ == "q8_0" and rc and "cannot be written by this build" in err:
                print("note: q8_0 not in this build yet (%s)" % err.strip())
                continue
            check(rc == 0, "export --type %s (%s)" % (typ, o.strip() if rc == 0 else err.strip()))
            if rc:
                continue
            tr = gguf.GGUFReader(out_t)
            # rows that are not a multiple of Q8_0's 32-value block (lora_b's r = 4, down_proj's 172) fall back to F16
            bad = [t.name for t in tr.tensors if t.tensor_type.name != (typ.upper() if t.shape[0] % 32 == 0 else "F16")]
            check(not bad, "--type %s: every tensor %s, or F16 where ne[0] is not a multiple of 32 (%s)" % (typ, typ.upper(), bad[:3]))
            if typ == "q8_0":
                sd = load_file(os.path.join(lora, "adapter_model.safetensors"))
                t = [t for t in tr.tensors if t.name == "blk.0.attn_v.weight.lora_a"][0]
                A = sd["base_model.model.model.layers.0.self_attn.v_proj.lora_A.weight"]
                check(np.array_equal(np.array(t.data).reshape(-1), gguf.quants.quantize(A, gguf.GGMLQuantizationType.Q8_0).reshape(-1)),
                      "q8_0 lora_a bytes equal gguf.quants.quantize of lora_A")
            e = rel_err(llama_logits(llama(GGUF, out_t), row), peft_logits([row], lora, td)[0])
            check(e <= tol, "--type %s: llama.cpp vs peft.c f32 logits max rel err %.2e (<= %g)" % (typ, e, tol))

        # refusals
        for method in ("dora", "ia3", "prompt_tuning"):
            extra = ("--target", "q_proj,v_proj") if method != "prompt_tuning" else ()
            a = train(td, method, "--method", method, *extra)
            rc, o, err = peft("export", "--model", GGUF, "--adapter", a, "--gguf", os.path.join(td, method + ".gguf"))
            check(rc == 1 and method in err.lower() and not os.path.exists(os.path.join(td, method + ".gguf")),
                  "%s adapter refused naming the method: %s" % (method, err.strip()[:160]))
        other = os.path.join(td, "other")
        os.makedirs(other)
        cfg = json.load(open(os.path.join(lora, "adapter_config.json")))
        json.dump(cfg, open(os.path.join(other, "adapter_config.json"), "w"))
        sd = load_file(os.path.join(lora, "adapter_model.safetensors"))
        from safetensors.numpy import save_file
        save_file({k: (np.zeros((v.shape[0], v.shape[1] + 1), np.float32) if ".lora_A." in k else v) for k, v in sd.items()},
                  os.path.join(other, "adapter_model.safetensors"), metadata={"format": "pt"})
        rc, o, err = peft("export", "--model", GGUF, "--adapter", other, "--gguf", os.path.join(td, "other.gguf"))
        check(rc == 1 and "shape" in err.lower(), "an adapter of another base (lora_A [r, in + 1]) refused: %s" % err.strip()[:160])
    if failures:
        print("%d failure(s)" % len(failures))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
