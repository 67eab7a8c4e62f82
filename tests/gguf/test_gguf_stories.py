#!/usr/bin/env python3
"""stories260K.gguf (../shared/models/stories260K-gguf, llama.cpp's CI model) as a complete model.

Oracles: Karpathy's published greedy sample; ggml-org's `gguf` package reading the file's metadata
and vocabulary; transformers 5.23 loading the same GGUF (its own dequantization, q/k un-permutation
and SentencePiece conversion: AutoModelForCausalLM / AutoTokenizer with gguf_file=); HF PEFT
loading the adapter peft.c trains on it.
  * `peft generate --model X.gguf --prompt ""` greedy from BOS starts with the sample, and
    `--prompt-ids 1` gives transformers' greedy ids;
  * `peft inspect` reports the metadata's dimensions; `peft tokenize` gives transformers' ids
    (plus llama.cpp's always-prepended "▁" on a text starting with a space), whose vocabulary
    texts spell the text, and decodes them back to it;
  * logits of llama_forward and llama_decode equal transformers' (max relative error 1e-5);
  * `peft train` (LoRA, 4 steps) writes an adapter whose names are HF's and that
    PeftModel.from_pretrained loads onto transformers' model with no missing or unexpected keys.
Exit 0 pass, 1 fail, 77 skipped (no file in ../shared, no gguf/transformers).
"""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gguf_common import SHARED, check, copy_for_transformers, driver_logits, failures, peft, rel_err  # noqa: E402

GGUF = os.path.join(SHARED, "models", "stories260K-gguf", "stories260K.gguf")
SAMPLE = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park. "
          "One day, she saw a big, red ball.")
if not os.path.exists(GGUF):
    print("SKIP: %s not found" % GGUF)
    sys.exit(77)
try:
    import gguf
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from peft import PeftModel
except Exception as e:  # noqa: BLE001
    print("SKIP: gguf / torch / transformers / peft not importable (%s)" % e)
    sys.exit(77)



def main():
    reader = gguf.GGUFReader(GGUF)
    meta = {k: f.contents() for k, f in reader.fields.items()}
    vocab = meta["tokenizer.ggml.tokens"]

    rc, out, err = peft("generate", "--model", GGUF, "--prompt", "", "--max-new", 48)
    check(rc == 0 and out.startswith(SAMPLE), "generate from BOS starts with the published sample: %r" % out[:140])

    rc, out, err = peft("inspect", "--model", GGUF)
    want = ["layers            %d" % meta["llama.block_count"], "hidden_size       %d" % meta["llama.embedding_length"],
            "intermediate_size %d" % meta["llama.feed_forward_length"],
            "heads             %d (kv heads %d" % (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]),
            "vocab_size        %d" % len(vocab), "context           %d" % meta["llama.context_length"]]
    check(rc == 0 and all(w in out for w in want), "inspect reports the metadata's dimensions")

    with tempfile.TemporaryDirectory() as td:
        tf_gguf = os.path.join(td, "stories260K.gguf")
        copy_for_transformers(GGUF, tf_gguf)
        tok = AutoTokenizer.from_pretrained(td, gguf_file="stories260K.gguf")
        model = AutoModelForCausalLM.from_pretrained(td, gguf_file="stories260K.gguf", torch_dtype=torch.float32).eval()

        texts = [SAMPLE, "Tom and Sue went to the shop. \"Look!\" said Tom.\nThey ran home.", "  two  spaces, digits 1234 é"]
        for text in texts:
            rc, out, err = peft("tokenize", "--model", GGUF, "--text", text)
            ids = [int(x) for x in out.replace(",", " ").split()] if rc == 0 else []
            ref = tok(text).input_ids
            if text[0] == " ":
                # llama.cpp always prepends the "▁" of add_space_prefix (llama-vocab.cpp: text = ' ' before
                # the first fragment); transformers' Metaspace(prepend_scheme="first") skips it when the
                # text already starts with a space. peft.c follows llama.cpp: one more "▁" after BOS.
                ref = ref[:1] + [vocab.index("\u2581")] + ref[1:]
            check(ids == ref, "tokenize %r: %d ids, transformers' GGUF tokenizer %s" % (text[:30], len(ids), "agrees" if ids == ref else ref))
            rc, dec, err = peft("tokenize", "--model", GGUF, "--decode", "--ids", ",".join(map(str, ids)), "--skip-special")
            check(rc == 0 and dec.rstrip("\n") == text, "decode round trip of %r: %r" % (text[:30], dec[:60]))
        rc, out, err = peft("tokenize", "--model", GGUF, "--text", SAMPLE)
        ids = [int(x) for x in out.replace(",", " ").split()]
        spelled = "".join(vocab[i] for i in ids[1:]).replace("\u2581", " ")
        check(ids[0] == meta["tokenizer.ggml.bos_token_id"] and spelled == " " + SAMPLE,
              "the ids' vocabulary entries (gguf package) spell the sample after BOS")

        rc, out, err = peft("generate", "--model", GGUF, "--prompt-ids", "1", "--max-new", 40)
        got = [int(x) for x in out.split()] if rc == 0 else []
        ref = model.generate(torch.tensor([[1]]), max_new_tokens=40, do_sample=False, eos_token_id=None)[0, 1:].tolist()
        check(got == ref, "greedy ids from BOS equal transformers' (%d ids)" % len(got))

        rows = [ids[:24], [1] + ids[5:28]]
        logits = driver_logits(GGUF, rows, td)
        with torch.no_grad():
            ref = model(torch.tensor(rows)).logits.numpy()
        for key in ("logits", "decode_logits"):
            e = rel_err(logits[key], ref)
            check(e <= 1e-5, "%s vs transformers from the same GGUF: max relative error %.2e" % (key, e))

        data = os.path.join(td, "train.txt")
        with open(data, "w") as f:
            f.write((SAMPLE + "\n") * 20)
        adapter = os.path.join(td, "adapter")
        rc, out, err = peft("train", "--model", GGUF, "--data", data, "--out", adapter, "--target", "q_proj,k_proj,v_proj,down_proj",
                            "--rank", 4, "--alpha", 8, "--steps", 4, "--batch", 2, "--seq-len", 32, "--lr", "1e-2")
        check(rc == 0, "peft train on the .gguf (%s)" % err.strip().splitlines()[-1:] if err.strip() else "peft train on the .gguf")
        if rc == 0:
            cfg = json.load(open(os.path.join(adapter, "adapter_config.json")))
            check(sorted(cfg["target_modules"]) == ["down_proj", "k_proj", "q_proj", "v_proj"], "adapter target_modules %s" % cfg["target_modules"])
            from safetensors.numpy import load_file
            keys = set(load_file(os.path.join(adapter, "adapter_model.safetensors")))
            want = {"base_model.model.model.layers.%d.%s.lora_%s.weight" % (l, m, ab) for l in range(meta["llama.block_count"])
                    for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj") for ab in "AB"}
            check(keys == want, "adapter tensors carry HF module names (%d)" % len(keys))
            pm = PeftModel.from_pretrained(model, adapter)
            sd = load_file(os.path.join(adapter, "adapter_model.safetensors"))
            k = "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"
            loaded = pm.base_model.model.model.layers[1].self_attn.k_proj.lora_B["default"].weight.detach().numpy()
            check(np.array_equal(loaded, sd[k]) and np.abs(sd[k]).max() > 0, "HF PEFT loads the trained (non-zero) lora_B onto the GGUF model")
    if failures:
        print("%d failure(s)" % len(failures))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
