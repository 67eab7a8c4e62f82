"""HF PEFT (the pinned PyPI peft on transformers) as the adapter oracle, in both directions.

  a. peft.c -> PEFT: `peft train` (the CLI) trains every method PEFT also has on a random
     transformers LlamaForCausalLM; PeftModel.from_pretrained loads the output directory with no
     missing/unexpected keys, and its logits equal peft.c's (driver_logits with
     PEFT_DRIVER_ADAPTER) to 1e-4 relative.
  b. PEFT -> peft.c: PEFT creates every type with non-trivial weights and save_pretrained()s it;
     peft.c loads it and matches PEFT's logits (1e-4) and, through `peft eval`, its loss.
  c. `peft merge` of the adapters of (a) loads with AutoModelForCausalLM and equals PEFT's
     merge_and_unload(): logits (1e-4) and every tensor of the state dict (1e-5).
  d. PiSSA / CorDA-IPM trained with --save-as-lora: the converted LoRA, loaded by PEFT on the
     ORIGINAL model, gives the trained model's function: for PiSSA the logits of the raw PiSSA
     adapter (peft.c re-derives the residual; PEFT loads it too), for both the validation loss
     the trainer measured on the trained model in memory (train_log.jsonl).

Relative error = max |peft.c - PEFT| / max |PEFT| over the whole tensor. Exit 77 (SKIP) only
when torch / transformers / peft / tokenizers cannot be imported.
"""
import contextlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings

try:
    import torch
    import transformers
    import peft
    import tokenizers
    from safetensors.torch import load_file
except ImportError as e:  # the oracle itself is missing
    print(f"SKIP: {e}")
    sys.exit(77)

from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

SRC = os.environ.get("PEFT_SRC", os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BUILD = os.environ.get("PEFT_BUILD", os.path.join(SRC, "build"))
PEFT_BIN = os.environ.get("PEFT_BIN", os.path.join(BUILD, "peft"))
DRIVER = os.path.join(BUILD, "driver_logits")
DEMO = os.path.join(SRC, "models", "demo")  # its byte-level BPE tokenizer (1024 ids) for `peft train`

TOL_LOGITS = 1e-4
TOL_WEIGHTS = 1e-5
FAILURES = []


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        FAILURES.append(name)


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


# ---- the base models ----------------------------------------------------------------------

def make_model(root, name, bias, seed):
    """A random LlamaForCausalLM (hidden 64, 2 layers, GQA 4/2 heads, vocab 1024) saved as
    safetensors with the demo tokenizer (peft train needs one). Norm weights are randomised too,
    so LN tuning and DoRA's norms see non-trivial values."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=1024, max_position_embeddings=256, bos_token_id=1023,
                      eos_token_id=1023, tie_word_embeddings=False, rms_norm_eps=1e-5, initializer_range=0.1,
                      attention_bias=bias, mlp_bias=bias)
    m = LlamaForCausalLM(cfg).float()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif n.endswith(".bias"):
                p.copy_(0.1 * torch.randn_like(p))
    d = os.path.join(root, name)
    m.save_pretrained(d, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(DEMO, f), d)
    return d


def load_base(d):
    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()


# ---- peft.c --------------------------------------------------------------------------------

def run(cmd, env=None):
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r.stdout


def peftc_logits(model_dir, ids, adapter=None, mode="forward"):
    """driver_logits' logits [B, T, V] of ids [B, T] (and decode_logits with mode "both")."""
    with tempfile.TemporaryDirectory() as t:
        ids_path, out = os.path.join(t, "ids.txt"), os.path.join(t, "out.safetensors")
        with open(ids_path, "w") as f:
            f.write("\n".join(" ".join(str(int(v)) for v in row) for row in ids.tolist()) + "\n")
        env = dict(os.environ, PEFT_DRIVER_MODEL=model_dir, PEFT_DRIVER_IDS=ids_path, PEFT_DRIVER_OUT=out,
                   PEFT_DRIVER_MODE=mode)
        if adapter:
            env["PEFT_DRIVER_ADAPTER"] = adapter
        run([DRIVER], env)
        return load_file(out)


def peftc_eval_loss(model_dir, adapter, ids):
    """`peft eval --ids` over one window holding ids [T] (after the adapter's virtual tokens)."""
    with tempfile.TemporaryDirectory() as t:
        p = os.path.join(t, "ids.txt")
        with open(p, "w") as f:
            f.write(" ".join(str(int(v)) for v in ids.tolist()))
        nv = json.load(open(os.path.join(adapter, "adapter_config.json"))).get("num_virtual_tokens") or 0
        out = run([PEFT_BIN, "eval", "--model", model_dir, "--adapter", adapter, "--data", p, "--ids",
                   "--seq-len", str(len(ids) + nv), "--batch", "1"])
        return float(out.split("loss")[1].split()[0])


TRAIN = ["--steps", "3", "--batch", "2", "--seq-len", "32", "--seed", "3", "--no-progress", "--val-fraction", "0"]


def peftc_train(model_dir, data, out, args):
    run([PEFT_BIN, "train", "--model", model_dir, "--data", data, "--out", out] + TRAIN + args)
    return out


# ---- PEFT ------------------------------------------------------------------------------------

class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def peft_load(model_dir, adapter):
    """PeftModel.from_pretrained with every warning and log message captured; the load is
    repeated through set_peft_model_state_dict to read PEFT's own missing/unexpected keys (filtered
    as PeftModel.load_adapter does: the keys of this tuner and adapter). Returns (model, problems)."""
    from peft import PeftModel
    from peft.utils import load_peft_weights, set_peft_model_state_dict
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING

    handler = _Records()
    loggers = [logging.getLogger(n) for n in ("peft", "transformers", "")]
    for lg in loggers:
        lg.addHandler(handler)
    out, err = io.StringIO(), io.StringIO()
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            warnings.simplefilter("always")
            model = PeftModel.from_pretrained(load_base(model_dir), adapter).eval()
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    texts = [str(w.message) for w in caught] + handler.messages + [out.getvalue(), err.getvalue()]
    problems = [t for t in texts if "missing" in t.lower() or "unexpected" in t.lower()]
    res = set_peft_model_state_dict(model, load_peft_weights(adapter, device="cpu"), adapter_name="default")
    config = model.peft_config["default"]
    prefix = PEFT_TYPE_TO_PREFIX_MAPPING.get(config.peft_type, "")
    problems += [f"missing {k}" for k in res.missing_keys if prefix in k and "default" in k]
    unexpected = res.unexpected_keys
    if config.is_prompt_learning:
        # PEFT loads the prompt encoder apart from model.load_state_dict, which therefore lists
        # "prompt_embeddings" as unexpected: check that it did arrive instead.
        saved = load_file(os.path.join(adapter, "adapter_model.safetensors"))["prompt_embeddings"]
        if not torch.equal(model.get_prompt_embedding_to_save("default"), saved):
            problems.append("prompt_embeddings not loaded")
        unexpected = [k for k in unexpected if k != "prompt_embeddings"]
    problems += [f"unexpected {k}" for k in unexpected]
    return model, problems


def peft_logits(model, ids):
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    return out[:, out.shape[1] - ids.shape[1]:]  # prompt tuning returns the virtual rows too


def peft_loss(model, ids):
    """PEFT's mean next-token loss of ids [B, T] with labels = input_ids (with prompt tuning the
    last virtual token's prediction of ids[0] counts too, as in peft.c's trainer and `peft eval`)."""
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss.item()


# ---- a + c: peft.c -> PEFT ------------------------------------------------------------------

# name, `peft train` options, learning rate (large enough to move every parameter off its init), merge
PEFTC_CASES = [
    ("lora all-linear rank/alpha patterns dropout",
     ["--method", "lora", "--target", "all-linear", "--rank", "4", "--alpha", "8", "--dropout", "0.1",
      "--rank-pattern", "q_proj=8,down_proj=2", "--alpha-pattern", "v_proj=32,layers.1.mlp.up_proj=3"], "0.05", True),
    ("rslora patterns gaussian",
     ["--method", "lora", "--rslora", "--target", "q_proj,k_proj,v_proj,o_proj", "--rank", "8", "--alpha", "4",
      "--rank-pattern", "o_proj=4", "--alpha-pattern", "k_proj=2", "--init", "gaussian"], "0.05", True),
    ("dora", ["--method", "dora", "--target", "q_proj,v_proj,up_proj", "--rank", "4", "--alpha", "8",
              "--dropout", "0.05"], "0.05", True),
    ("ia3 feedforward", ["--method", "ia3", "--target", "k_proj,v_proj,up_proj,down_proj",
                         "--feedforward-modules", "up_proj,down_proj"], "0.05", True),
    ("vera", ["--method", "vera", "--target", "q_proj,v_proj,gate_proj", "--rank", "16", "--dropout", "0.1"],
     "0.05", True),
    ("prompt_tuning", ["--method", "prompt_tuning", "--num-virtual-tokens", "5"], "0.3", False),
    ("prefix_tuning", ["--method", "prefix_tuning", "--num-virtual-tokens", "4"], "0.05", False),
    ("ln_tuning", ["--method", "ln_tuning"], "0.05", False),
]


def moved(adapter, init_check):
    """Every saved tensor that starts at a constant (LoRA's B, IA3's l, VeRA's lambda_b) has moved."""
    sd = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    stuck = [k for k, v in sd.items() if init_check(k) and (v == v.flatten()[0]).all()]
    return stuck


def case_peftc_to_peft(work, model_dir, data, ids, name, args, lr, merge):
    adapter = peftc_train(model_dir, data, os.path.join(work, "a_" + name.split()[0]), args + ["--lr", lr])
    stuck = moved(adapter, lambda k: any(s in k for s in ("lora_B", "ia3_l", "vera_lambda_b")))
    check(f"a {name}: trained away from init", not stuck, f"tensors still at their init: {stuck[:3]}")
    model, problems = peft_load(model_dir, adapter)
    check(f"a {name}: PEFT loads it cleanly", not problems, f"{len(problems)} missing/unexpected-key messages {problems[:3]}")
    ref = peft_logits(model, ids)
    mine = peftc_logits(model_dir, ids, adapter, mode="both" if "tuning" in name else "forward")
    e = rel_err(mine["logits"], ref)
    check(f"a {name}: logits", e <= TOL_LOGITS, f"rel err {e:.2e}")
    if "decode_logits" in mine:  # prompt/prefix tuning through the KV cache
        e = rel_err(mine["decode_logits"], ref)
        check(f"a {name}: cached decoding logits", e <= TOL_LOGITS, f"rel err {e:.2e}")
    if merge:
        case_merge(work, model_dir, adapter, model, ids, name)


def case_merge(work, model_dir, adapter, model, ids, name):
    merged_dir = os.path.join(work, "merged_" + name.split()[0])
    run([PEFT_BIN, "merge", "--model", model_dir, "--adapter", adapter, "--out", merged_dir])
    with torch.no_grad():
        ref_model = model.merge_and_unload().eval()
        ref = ref_model(input_ids=ids).logits
    mine_model = load_base(merged_dir)
    with torch.no_grad():
        mine = mine_model(input_ids=ids).logits
    e = rel_err(mine, ref)
    check(f"c {name}: merged logits", e <= TOL_LOGITS, f"rel err {e:.2e}")
    sd_ref, sd_mine = ref_model.state_dict(), mine_model.state_dict()
    same_keys = set(sd_ref) == set(sd_mine)
    worst = max((rel_err(sd_mine[k], sd_ref[k]), k) for k in sd_ref if k in sd_mine)
    check(f"c {name}: merged state_dict", same_keys and worst[0] <= TOL_WEIGHTS,
          f"same keys {same_keys}, worst rel err {worst[0]:.2e} ({worst[1]})")


# ---- b: PEFT -> peft.c ---------------------------------------------------------------------

def peft_cases():
    from peft import (IA3Config, LNTuningConfig, LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType,
                      VeraConfig)
    C = TaskType.CAUSAL_LM
    # name, model ("plain" / "biased"), config
    return [
        ("lora all-linear patterns", "plain",
         LoraConfig(task_type=C, r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear", init_lora_weights=False,
                    rank_pattern={"q_proj": 8, "layers.1.mlp.down_proj": 2}, alpha_pattern={"v_proj": 3})),
        ("lora biased model", "biased",
         LoraConfig(task_type=C, r=4, lora_alpha=16, target_modules=["q_proj", "o_proj", "gate_proj"],
                    init_lora_weights=False)),
        ("rslora patterns", "biased",
         LoraConfig(task_type=C, r=8, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                    rank_pattern={"o_proj": 4}, alpha_pattern={"k_proj": 2}, init_lora_weights=False)),
        ("dora biased model", "biased",
         LoraConfig(task_type=C, r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
                    init_lora_weights=False)),
        ("ia3 feedforward biased model", "biased",
         IA3Config(task_type=C, target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"])),
        ("vera", "plain",
         VeraConfig(task_type=C, r=16, target_modules=["q_proj", "v_proj"], save_projection=True, vera_dropout=0.1)),
        ("prompt_tuning", "plain", PromptTuningConfig(task_type=C, num_virtual_tokens=6)),
        ("prefix_tuning", "plain", PrefixTuningConfig(task_type=C, num_virtual_tokens=5)),
        ("ln_tuning", "plain",
         LNTuningConfig(task_type=C, target_modules=["input_layernorm", "post_attention_layernorm", "norm"])),
    ]


def randomise(model, seed):
    """Every adapter parameter moves off its init: LoRA's B (init_lora_weights=False already does),
    DoRA's magnitude, IA3/VeRA/LN vectors, the prompt/prefix embeddings."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if not p.requires_grad:
                continue
            noise = torch.randn(p.shape, generator=g)
            if any(s in n for s in ("ia3_l", "lora_magnitude_vector", "ln_tuning_layers", "vera_lambda")):
                p.mul_(1 + 0.3 * noise).add_(0.1 * noise)
            else:
                p.add_(0.2 * noise)


def case_peft_to_peftc(work, models, ids, name, kind, config, seed):
    from peft import get_peft_model
    model = get_peft_model(load_base(models[kind]), config).eval()
    randomise(model, seed)
    adapter = os.path.join(work, "b_" + name.replace(" ", "_"))
    model.save_pretrained(adapter)
    ref = peft_logits(model, ids)
    mine = peftc_logits(models[kind], ids, adapter, mode="both" if "tuning" in name else "forward")
    e = rel_err(mine["logits"], ref)
    check(f"b {name}: logits", e <= TOL_LOGITS, f"rel err {e:.2e}")
    if "decode_logits" in mine:
        e = rel_err(mine["decode_logits"], ref)
        check(f"b {name}: cached decoding logits", e <= TOL_LOGITS, f"rel err {e:.2e}")
    loss_ref, loss = peft_loss(model, ids[:1]), peftc_eval_loss(models[kind], adapter, ids[0])
    check(f"b {name}: peft eval loss", abs(loss - loss_ref) <= 1e-5 * abs(loss_ref) + 1e-6,
          f"{loss:.6f} vs PEFT {loss_ref:.6f}")


# ---- d: PiSSA / CorDA saved as LoRA --------------------------------------------------------

def final_val_loss(adapter):
    lines = [json.loads(l) for l in open(os.path.join(adapter, "train_log.jsonl")) if "val_loss" in l]
    return lines[-1]["val_loss"]


def case_svd_as_lora(work, model_dir, data, ids, method):
    """Trains `method` with --save-as-lora and a one-document validation file whose tokens are known
    (the tokenizers library on the same tokenizer.json, plus EOS as the trainer appends it to text)."""
    val_text = "A brown dog jumps over the quick lazy fox."
    val = os.path.join(work, "val.txt")
    with open(val, "w") as f:
        f.write(val_text)
    tok = tokenizers.Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    val_ids = torch.tensor([tok.encode(val_text).ids + [1023]])
    common = ["--method", method, "--target", "q_proj,v_proj,down_proj", "--rank", "4", "--alpha", "8", "--lr", "0.01",
              "--val-data", val]
    if method.startswith("corda"):
        common += ["--corda-calib-batches", "2"]
    conv = peftc_train(model_dir, data, os.path.join(work, f"d_{method}_lora"), common + ["--save-as-lora"])
    model, problems = peft_load(model_dir, conv)
    check(f"d {method}: PEFT loads the converted LoRA cleanly", not problems, f"{problems[:3]}")
    loss_ref = peft_loss(model, val_ids)
    loss = final_val_loss(conv)
    check(f"d {method}: converted LoRA on the original model = trained model (val loss)",
          abs(loss - loss_ref) <= 1e-5 * abs(loss_ref), f"trainer {loss:.6f} vs PEFT {loss_ref:.6f}")
    if method == "pissa":  # the raw adapter on the residual base: peft.c and PEFT both re-derive W_res
        raw = peftc_train(model_dir, data, os.path.join(work, f"d_{method}_raw"), common)
        trained = peftc_logits(model_dir, ids, raw)["logits"]
        e = rel_err(trained, peft_logits(model, ids))
        check(f"d {method}: converted LoRA in PEFT = peft.c's trained model (logits)", e <= TOL_LOGITS, f"rel err {e:.2e}")
        raw_model, problems = peft_load(model_dir, raw)
        e = rel_err(trained, peft_logits(raw_model, ids))
        check(f"d {method}: raw PiSSA adapter in PEFT (its own SVD) = peft.c", e <= TOL_LOGITS and not problems,
              f"rel err {e:.2e}, {len(problems)} key messages")


def guarded(name, fn, *args):
    """Runs one case; an exception (a peft.c command failing, PEFT refusing a file) fails that case
    and the others still run."""
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - reported as this case's failure
        check(name, False, f"{type(e).__name__}: {str(e)[-1500:]}")


def main():
    for p in (PEFT_BIN, DRIVER):
        if not os.path.exists(p):
            print(f"FAIL: {p} is not built")
            return 1
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
    with tempfile.TemporaryDirectory() as work:
        models = {"plain": make_model(work, "plain", False, 0), "biased": make_model(work, "biased", True, 1)}
        data = os.path.join(work, "train.txt")
        with open(data, "w") as f:
            f.write("".join(f"{i} the quick brown fox jumps over the lazy dog; a lazy dog sleeps in the sun.\n"
                            for i in range(40)))
        ids = torch.randint(0, 1024, (2, 20), generator=torch.Generator().manual_seed(5))
        for name, args, lr, merge in PEFTC_CASES:
            guarded("a " + name, case_peftc_to_peft, work, models["plain"], data, ids, name, args, lr, merge)
        for i, (name, kind, config) in enumerate(peft_cases()):
            guarded("b " + name, case_peft_to_peftc, work, models, ids, name, kind, config, 100 + i)
        for method in ("pissa", "corda_ipm"):
            guarded("d " + method, case_svd_as_lora, work, models["plain"], data, ids, method)
    print(f"{len(FAILURES)} failures" + (f": {FAILURES}" if FAILURES else ""))
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
