#!/usr/bin/env python3
"""QLoRA training parity: peft.c with --quantize nf4 against HF PEFT on bitsandbytes Linear4bit.

The reference is the QLoRA recipe itself: a random transformers Llama whose seven linear
projections are replaced by bitsandbytes.nn.Linear4bit (nf4, blocksize 64, double quantisation,
compute dtype f32, weights quantized by bitsandbytes from the f32 checkpoint), then HF PEFT's
get_peft_model(LoraConfig(init_lora_weights=False)) on it (PEFT's bnb LoRA layers) and
torch.optim.AdamW. peft.c (tests/drivers/driver_train.c, PEFT_DRIVER_QUANTIZE=nf4) loads the
f32 checkpoint and the saved adapter and quantizes the same weights itself (src/kernels/quant.c,
bit for bit bitsandbytes' blocks: tests/hf/test_quant_bnb.py). Compared (hf_train_oracle.compare):
the first loss, every lora_A / lora_B gradient, the adapter after 3 AdamW steps and the loss
before each step, max |peft.c - PEFT| / max |PEFT| <= 1e-4 per tensor: the frozen weights are
the same numbers, so only the order of summation differs, as in test_transformers_lora.
torch runs on one thread with its AVX2 kernels, whose mean of the absmax quant.c replays.
Exit 0 = pass, 1 = fail, 77 = skipped (torch / transformers / peft / bitsandbytes not importable).
"""
import os
import sys
import tempfile
import warnings

os.environ["ATEN_CPU_CAPABILITY"] = "avx2"  # before torch loads its kernels
try:
    import torch
    import transformers
    import bitsandbytes as bnb
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM
except ImportError as e:  # the oracle itself is missing
    print(f"SKIP: {e}")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_train_oracle  # noqa: E402
import test_transformers_parity as tp  # noqa: E402

DRIVER = os.path.join(tp.BUILD, "driver_train")
SITES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LR, STEPS = 1e-2, 3
# every site's in_features a multiple of nf4's block of 64 (down_proj: intermediate 128)
tp.VARIANTS["llama_qlora"] = (LlamaForCausalLM, LlamaConfig, dict(intermediate_size=128), torch.float32, None)

CASES = [
    # name, rank, alpha, packed, recompute, weight decay
    ("nf4 gqa", 4, 8, False, False, 0.0),
    ("nf4 gqa+packed+recompute+wd", 2, 4, True, True, 0.05),
]


def to_linear4bit(model):
    """Every site nn.Linear replaced by a Linear4bit holding bitsandbytes' nf4 blocks of its weight."""
    for name, mod in list(model.named_modules()):
        for site in SITES:
            lin = getattr(mod, site, None)
            if isinstance(lin, torch.nn.Linear):
                q = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                      compute_dtype=torch.float32, compress_statistics=True, quant_type="nf4")
                q.weight = bnb.nn.Params4bit(lin.weight.detach().clone(), requires_grad=False, quant_type="nf4",
                                             compress_statistics=True, blocksize=64)
                if lin.bias is not None:
                    q.bias = torch.nn.Parameter(lin.bias.detach().clone(), requires_grad=False)
                setattr(mod, site, q.to("cpu"))  # .to(device) is where Params4bit quantizes
    return model


def run_case(tmp, case, g):
    name, rank, alpha, packed, recompute, wd = case
    work = os.path.join(tmp, name.replace(" ", "_").replace("+", "_"))
    cfg = tp.make_model(os.path.join(work, "model"), "llama_qlora", seed=3)
    base = to_linear4bit(tp.load_reference(os.path.join(work, "model")))
    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in base.modules())
    torch.manual_seed(5)
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=alpha, target_modules=SITES, lora_dropout=0.0, bias="none",
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    model.save_pretrained(os.path.join(work, "adapter"))
    model.train()
    ids, labels, pos = hf_train_oracle.make_batch(cfg.vocab_size, 2, 12, packed, g)
    hf_train_oracle.write_batch(work, ids, hf_train_oracle.driver_targets(labels), pos)
    os.environ["PEFT_DRIVER_QUANTIZE"] = "nf4"
    try:
        out = hf_train_oracle.run_driver(DRIVER, work, LR, wd, STEPS, recompute)
    except RuntimeError as e:
        print(f"FAIL {name}: {e}")
        return False
    finally:
        del os.environ["PEFT_DRIVER_QUANTIZE"]
    ref = hf_train_oracle.reference(
        model, lambda: model(input_ids=ids, labels=labels, position_ids=pos, use_cache=False).loss, LR, wd, STEPS)
    if n4 != len(SITES) * cfg.num_hidden_layers or len(ref[1]) != 2 * n4:
        print(f"FAIL {name}: {n4} Linear4bit layers, {len(ref[1])} PEFT tensors")
        return False
    return hf_train_oracle.compare(name, out, ref)


def main():
    torch.set_num_threads(1)  # torch's mean of the absmax in the order quant.c replays
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore")  # PEFT / bitsandbytes deprecation chatter
    if not os.access(DRIVER, os.X_OK):
        print(f"FAIL: driver {DRIVER} is not built")
        return 1
    g = torch.Generator().manual_seed(9)
    with tempfile.TemporaryDirectory(prefix="peft_qlora_") as tmp:
        results = [run_case(tmp, c, g) for c in CASES]
    passed = sum(results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
