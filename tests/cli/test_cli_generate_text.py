#!/usr/bin/env python3
"""`peft generate --prompt` prints the text HF's tokenizer gives for prompt + continuation.

Issue 13, class 10: with a SentencePiece-style tokenizer the first new token's leading space
("▁was") vanished where prompt and continuation join ("The little dogwas"), because the new
ids were decoded on their own. The CLI must stream as HF's TextStreamer does: decode the whole
sequence and print what is new.

The model: a Llama with the real Llama-2 tokenizer (../shared/tokenizers/llama2, vocab 32000)
and hand-set weights that make greedy decoding repeat one chosen token: every layer's output
projections are zero (the residual is the token embedding), every embedding row is all ones,
the final norm is one, and the untied lm_head is zero except the chosen token's row (ones),
so that token has logit hidden_size and every other 0. Oracle: the `tokenizers` library's
decode of prompt ids + generated ids (skip_special_tokens), for tokens with and without a
leading "▁", plus the generated ids themselves (`--prompt-ids`, must be the chosen token).

Exit 0 = pass, 1 = fail, 77 = skipped (no `tokenizers` package, no ../shared tokenizer, no CLI).
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("PEFT_SRC") or os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("PEFT_SHARED") or os.path.join(SRC, "..", "shared")
TOK_DIR = os.path.join(SHARED, "tokenizers", "llama2")
PEFT_BIN = os.environ.get("PEFT_BIN") or os.path.join(SRC, "build", "peft")

V, C, F, H, KVH, HD = 32000, 8, 16, 2, 1, 4


def write_model(d, token):
    """config.json + model.safetensors (f32) of the model described above."""
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V, "hidden_size": C,
           "intermediate_size": F, "num_hidden_layers": 1, "num_attention_heads": H, "num_key_value_heads": KVH,
           "head_dim": HD, "max_position_embeddings": 256, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
           "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
           "torch_dtype": "float32"}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f)
    ones, zeros = (lambda n: struct.pack(f"<{n}f", *([1.0] * n))), (lambda n: bytes(4 * n))
    head = bytearray(zeros(V * C))
    head[token * C * 4:(token + 1) * C * 4] = ones(C)
    p = "model.layers.0."
    tensors = [("model.embed_tokens.weight", [V, C], ones(V * C)), ("lm_head.weight", [V, C], bytes(head)),
               ("model.norm.weight", [C], ones(C)), (p + "input_layernorm.weight", [C], ones(C)),
               (p + "post_attention_layernorm.weight", [C], ones(C)),
               (p + "self_attn.q_proj.weight", [H * HD, C], zeros(H * HD * C)),
               (p + "self_attn.k_proj.weight", [KVH * HD, C], zeros(KVH * HD * C)),
               (p + "self_attn.v_proj.weight", [KVH * HD, C], zeros(KVH * HD * C)),
               (p + "self_attn.o_proj.weight", [C, H * HD], zeros(C * H * HD)),
               (p + "mlp.gate_proj.weight", [F, C], zeros(F * C)), (p + "mlp.up_proj.weight", [F, C], zeros(F * C)),
               (p + "mlp.down_proj.weight", [C, F], zeros(C * F))]
    header, off = {}, 0
    for name, shape, blob in tensors:
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(blob)]}
        off += len(blob)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(os.path.join(d, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for _, _, blob in tensors:
            f.write(blob)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TOK_DIR, name), d)


def main():
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        print(f"SKIP: the tokenizers package is not installed ({e})")
        return 77
    if not os.path.isfile(os.path.join(TOK_DIR, "tokenizer.json")):
        print(f"SKIP: no {TOK_DIR}/tokenizer.json")
        return 77
    if not os.path.isfile(PEFT_BIN):
        print(f"SKIP: no peft binary at {PEFT_BIN}")
        return 77
    tok = Tokenizer.from_file(os.path.join(TOK_DIR, "tokenizer.json"))
    failures = 0
    tmp = tempfile.mkdtemp(prefix="peft_gen_text_")
    try:
        for prompt, piece in (("The little dog", "▁was"), ("The little dog", "s"), ("Hello", "▁world"),
                              ("Une fête", "▁été")):
            token = tok.token_to_id(piece)
            if token is None:
                print(f"FAIL: {piece!r} is not a Llama-2 token")
                failures += 1
                continue
            d = os.path.join(tmp, f"m{token}")
            os.mkdir(d)
            write_model(d, token)
            prompt_ids = tok.encode(prompt).ids  # with BOS, as peft encodes a prompt
            ids = subprocess.run([PEFT_BIN, "generate", "--model", d, "--prompt-ids", ",".join(map(str, prompt_ids)),
                                  "--max-new", "3", "--ignore-eos"], capture_output=True, text=True, timeout=120)
            new = [int(x) for x in ids.stdout.split()] if ids.returncode == 0 else []
            txt = subprocess.run([PEFT_BIN, "generate", "--model", d, "--prompt", prompt, "--max-new", "3", "--ignore-eos"],
                                 capture_output=True, text=True, timeout=120)
            want = tok.decode(prompt_ids + new, skip_special_tokens=True)
            got = txt.stdout.rstrip("\n")
            ok = new == [token] * 3 and txt.returncode == 0 and got == want
            print(f"{'ok' if ok else 'FAIL'}: {prompt!r} + 3 x {piece!r}: printed {got!r}, tokenizers decode {want!r}"
                  f" (ids {new}, rc {txt.returncode} {txt.stderr.strip()[:120]})")
            failures += not ok
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
