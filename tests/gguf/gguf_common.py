"""Helpers of the GGUF tests: running peft.c, and GGUF copies transformers can load."""
import os
import subprocess

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("PEFT_SRC") or os.path.dirname(os.path.dirname(HERE))
BUILD = os.environ.get("PEFT_BUILD") or os.path.join(SRC, "build")
BIN = os.environ.get("PEFT_BIN") or os.path.join(BUILD, "peft")
SHARED = os.environ.get("PEFT_SHARED") or os.path.join(SRC, "..", "shared")


failures = []


def check(ok, msg):
    """Records a failed check in `failures` (the tests exit 1 when it is not empty)."""
    print(("ok   " if ok else "FAIL ") + msg)
    if not ok:
        failures.append(msg)


def permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute: q/k rows of each head interleaved (rotate-half -> pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def peft(*args, timeout=300):
    r = subprocess.run([BIN] + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


def driver_logits(model, rows, td):
    """peft.c's logits [B, T, V] of model (a dir or a .gguf) over rows, llama_forward and llama_decode."""
    from safetensors.numpy import load_file
    ids = os.path.join(td, "ids.txt")
    with open(ids, "w") as f:
        for r in rows:
            f.write(" ".join(str(int(x)) for x in r) + "\n")
    out = os.path.join(td, "logits.safetensors")
    env = dict(os.environ, PEFT_DRIVER_MODEL=model, PEFT_DRIVER_IDS=ids, PEFT_DRIVER_OUT=out, PEFT_DRIVER_MODE="both")
    for k in ("PEFT_DRIVER_POS", "PEFT_DRIVER_T", "PEFT_DRIVER_ADAPTER"):
        env.pop(k, None)
    r = subprocess.run([os.path.join(BUILD, "driver_logits")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=300)
    if r.returncode:
        raise RuntimeError("driver_logits %s: %s" % (model, r.stderr.decode()))
    return load_file(out)


def rel_err(a, b):
    """max over positions of max_v |a - b| / max_v |b|."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, a.shape[-1])
    b = np.asarray(b, dtype=np.float64).reshape(-1, b.shape[-1])
    return float((np.abs(a - b).max(axis=1) / np.abs(b).max(axis=1)).max())


def copy_for_transformers(src, dst):
    """src rewritten with gguf.GGUFWriter minus the u32 0xFFFFFFFF token ids ("none", which
    transformers 5.23's GGUF tokenizer indexes the vocabulary with); tensors byte for byte."""
    import gguf
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, arch=r.fields["general.architecture"].contents())
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        v = f.contents()
        if isinstance(v, int) and v == 0xFFFFFFFF:
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(k, v, f.types[0], sub_type=f.types[1])
        else:
            w.add_key_value(k, v, f.types[0])
    for t in r.tensors:
        w.add_tensor(t.name, np.array(t.data), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
