"""The task head in peft.c's adapter files against what HF PEFT itself writes.

test_adapter_head (C) leaves two adapters of a model with a task head: DIR/seq_cls (head
"score.weight" [3, 16], task seq-cls) and DIR/image_cls (head "classifier.weight" [3, 16] and
"classifier.bias" [3], task image-cls). peft 0.21.2 is the oracle:
  a. get_peft_model(GPT2ForSequenceClassification, LoraConfig(task_type="SEQ_CLS")) +
     save_pretrained: task_type, modules_to_save and the head's keys (every key that is not a
     LoRA factor) and shapes must be peft.c's seq_cls ones;
  b. a ViTForImageClassification with LoraConfig(modules_to_save=["classifier"]) (no task type:
     PEFT has none for image classification): the same for image_cls;
  c. the real SEQ_CLS adapter ../shared/models/lora-gpt2-seqcls-cattn-r8 (PEFT-written) keeps its
     head under the same key format: base_model.model.score.weight [6, 768].
Exit 77 (SKIP) only when torch / transformers / peft cannot be imported or the shared file is
absent.
"""
import json
import os
import subprocess
import sys
import tempfile
import warnings

try:
    import torch
    import peft
    from peft import LoraConfig, get_peft_model
    from safetensors import safe_open
    from transformers import GPT2Config, GPT2ForSequenceClassification, ViTConfig, ViTForImageClassification
except ImportError as e:  # the oracle itself is missing
    print(f"SKIP: {e}")
    sys.exit(77)

warnings.filterwarnings("ignore")
failures = 0


def check(cond, what):
    global failures
    print(("ok   " if cond else "FAIL ") + what)
    failures += not cond


def head_of(d):
    """(task_type, modules_to_save, {non-LoRA key: shape}) of an adapter directory."""
    c = json.load(open(os.path.join(d, "adapter_config.json")))
    with safe_open(os.path.join(d, "adapter_model.safetensors"), "pt") as f:
        keys = {k: list(f.get_slice(k).get_shape()) for k in f.keys() if ".lora_" not in k}
    return c.get("task_type"), c.get("modules_to_save"), keys


def target_names(model, *kinds):
    """The module-name endings of model's attention projections (they differ across transformers versions)."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    return [k for k in kinds if k in names]


build = os.environ.get("PEFT_BUILD", "build")
shared = os.environ.get("PEFT_SHARED", os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared"))
real = os.path.join(shared, "models", "lora-gpt2-seqcls-cattn-r8")
if not os.path.isfile(os.path.join(real, "adapter_model.safetensors")):
    print(f"SKIP: {real} not found")
    sys.exit(77)

with tempfile.TemporaryDirectory() as tmp:
    r = subprocess.run([os.path.join(build, "test_adapter_head"), tmp], capture_output=True, text=True)
    check(r.returncode == 0, "test_adapter_head wrote its adapters: " + r.stdout.strip() + r.stderr.strip()[-400:])
    ours_seq, ours_img = head_of(os.path.join(tmp, "seq_cls")), head_of(os.path.join(tmp, "image_cls"))

    torch.manual_seed(0)
    gpt2 = GPT2ForSequenceClassification(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=32,
                                                    num_labels=3, pad_token_id=0))
    pm = get_peft_model(gpt2, LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    pm.save_pretrained(os.path.join(tmp, "peft_seq"))
    theirs = head_of(os.path.join(tmp, "peft_seq"))
    print("peft", peft.__version__, "SEQ_CLS:", theirs, "peft.c:", ours_seq)
    check(ours_seq[0] == theirs[0] == "SEQ_CLS", "task_type SEQ_CLS as PEFT writes it")
    check(ours_seq[1] == theirs[1], f"modules_to_save {ours_seq[1]} as PEFT writes it ({theirs[1]})")
    check(ours_seq[2] == theirs[2] == {"base_model.model.score.weight": [3, 16]}, "the head's key and shape as PEFT's")

    vit = ViTForImageClassification(ViTConfig(image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1,
                                              num_attention_heads=2, intermediate_size=32, num_labels=3))
    targets = target_names(vit, "query", "value", "q_proj", "v_proj")
    pv = get_peft_model(vit, LoraConfig(r=2, target_modules=targets, modules_to_save=["classifier"]))
    pv.save_pretrained(os.path.join(tmp, "peft_img"))
    theirs = head_of(os.path.join(tmp, "peft_img"))
    print("image classification:", theirs, "peft.c:", ours_img)
    check(ours_img[0] is None and theirs[0] is None, "no task_type for image classification, as PEFT writes it (null)")
    check(ours_img[1] == theirs[1] == ["classifier"], f"modules_to_save {ours_img[1]} as PEFT writes it ({theirs[1]})")
    check(ours_img[2] == theirs[2], f"the head's keys and shapes as PEFT's: {sorted(theirs[2])}")

    t, _, keys = head_of(real)
    check(t == "SEQ_CLS" and keys == {"base_model.model.score.weight": [6, 768]},
          "the real PEFT SEQ_CLS adapter holds its head as base_model.model.score.weight [6, 768]")

print("test_peft_head_format:", "FAILED" if failures else "passed", f"({failures} failures)")
sys.exit(1 if failures else 0)
