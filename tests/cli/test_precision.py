#!/usr/bin/env python3
"""--precision auto|f32|bf16|f16 (issue 17 item 2) on the demo model (models/demo).

  1. auto picks what the rule says for THIS CPU, read from /proc/cpuinfo (the build is
     -march=native): f16 with avx512_fp16, else bf16 with avx512_bf16, else f32; train, eval,
     generate and serve each say it in one "precision: ..." line on stderr, stdout unchanged.
  2. --precision f32 is exact f32: its eval loss equals transformers' (f32, same ids) to 1e-5;
     where auto is f32, a 3-step training with no flag and with --precision f32 write
     byte-identical adapters; elsewhere auto's eval is within 1 % of f32's.
  3. an explicit bf16/f16 (--precision or the old --bf16/--f16) whose instructions the CPU lacks
     is refused naming the missing AVX512 extension and --precision f32/auto; --allow-emulated
     runs it (loss within 1 % of f32); conflicting flags exit 2 naming both; auto with
     --quantize q8_0 runs (f32 on the blocks), --quantize with an explicit 16-bit is refused.

Exit 0 = pass, 1 = fail, 77 = skipped (no demo model, no transformers).
"""
import os
import signal
import subprocess
import sys
import tempfile

SRC = os.environ.get("PEFT_SRC") or os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("PEFT_BIN") or os.path.join(SRC, "build", "peft")
DEMO = os.path.join(SRC, "models", "demo")
failures = 0


def check(ok, what):
    global failures
    print(("ok: " if ok else "FAIL: ") + what)
    failures += not ok


# The suite pins the default with PEFT_PRECISION=f32 (CMakeLists.txt); this test checks auto itself.
ENV = {k: v for k, v in os.environ.items() if k != "PEFT_PRECISION"}


def run(*args, env=None):
    p = subprocess.run([BIN] + list(args), capture_output=True, text=True, timeout=300, env=env or ENV)
    return p.returncode, p.stdout, p.stderr


def precision_lines(err):
    return [l for l in err.splitlines() if l.startswith("precision: ")]


def loss_of(out):
    return float(out.split("loss")[1].split()[0])


def main():
    if not os.path.exists(os.path.join(DEMO, "model.safetensors")):
        print("SKIP: %s/model.safetensors missing" % DEMO)
        return 77
    try:
        import torch
        from transformers import LlamaForCausalLM
    except ImportError as e:
        print("SKIP: transformers not importable (%s)" % e)
        return 77
    flags = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("flags"):
                flags = " %s " % line.split(":", 1)[1].strip()
                break
    native = {"f16": " avx512_fp16 " in flags, "bf16": " avx512_bf16 " in flags}
    expect = "f16" if native["f16"] else "bf16" if native["bf16"] else "f32"
    isa = {"f16": "AVX512-FP16", "bf16": "AVX512-BF16"}
    print("CPU: avx512_fp16 %d, avx512_bf16 %d -> auto should be %s" % (native["f16"], native["bf16"], expect))

    with tempfile.TemporaryDirectory() as td:
        torch.manual_seed(0)
        ids = torch.randint(3, 512, (40,))
        idfile = os.path.join(td, "ids.txt")
        with open(idfile, "w") as f:
            f.write(" ".join(str(int(v)) for v in ids))
        ev = ["eval", "--model", DEMO, "--data", idfile, "--ids", "--seq-len", str(len(ids)), "--batch", "1"]

        # 1 + 2: auto's line, f32 against transformers
        rc, out, err = run(*ev)
        lines = precision_lines(err)
        check(rc == 0 and len(lines) == 1 and lines[0].startswith("precision: %s (auto: " % expect),
              "eval, no flag: %s" % (lines or err.strip()[-200:]))
        check("precision" not in out and out.split()[0] == "tokens", "eval stdout unchanged: %r" % out[:60])
        auto_loss = loss_of(out) if rc == 0 else float("nan")
        rc, out, err = run(*ev, "--precision", "f32")
        f32_loss = loss_of(out) if rc == 0 else float("nan")
        check(precision_lines(err) == ["precision: f32 (--precision f32)"], "--precision f32 line: %s" % precision_lines(err))
        rc, out, err = run(*ev, env=dict(ENV, PEFT_PRECISION="f32"))
        check(rc == 0 and precision_lines(err) == ["precision: f32 (PEFT_PRECISION=f32)"] and loss_of(out) == f32_loss,
              "PEFT_PRECISION=f32 is the default: %s" % (precision_lines(err) or err.strip()[-200:]))
        rc, out, err = run(*ev, env=dict(ENV, PEFT_PRECISION="f8"))
        check(rc == 2 and "PEFT_PRECISION" in err, "PEFT_PRECISION=f8 refused: %s" % err.strip()[-200:])
        model = LlamaForCausalLM.from_pretrained(DEMO, torch_dtype=torch.float32)
        with torch.no_grad():
            hf = float(model(ids[None], labels=ids[None]).loss)
        check(abs(f32_loss - hf) <= 1e-5 * abs(hf), "--precision f32 eval loss %.6f vs transformers %.6f" % (f32_loss, hf))
        check(abs(auto_loss - f32_loss) <= 0.01 * f32_loss, "auto eval loss %.6f vs f32 %.6f" % (auto_loss, f32_loss))

        data = os.path.join(SRC, "data", "demo", "train.jsonl")
        if not os.path.exists(data):
            data = os.path.join(td, "train.txt")
            with open(data, "w") as f:
                f.write("ROMEO: But soft, what light through yonder window breaks? It is the east.\n" * 40)
        tr = ["train", "--model", DEMO, "--data", data, "--steps", "3", "--batch", "2", "--seq-len", "32", "--seed", "3",
              "--no-progress", "--val-fraction", "0", "--target", "q_proj,v_proj"]
        outs = {}
        for name, extra in (("auto", []), ("f32", ["--precision", "f32"])):
            d = os.path.join(td, name)
            rc, out, err = run(*tr, "--out", d, *extra)
            lines = precision_lines(err)
            check(rc == 0 and len(lines) == 1 and lines[0].startswith("precision: %s (" % (expect if name == "auto" else "f32")),
                  "train %s: %s" % (name, lines or err.strip()[-200:]))
            outs[name] = open(os.path.join(d, "adapter_model.safetensors"), "rb").read() if rc == 0 else None
        if expect == "f32":
            check(outs["auto"] is not None and outs["auto"] == outs["f32"],
                  "auto (= f32 here) and --precision f32 adapters byte-identical (%s bytes)" % len(outs["f32"] or b""))

        rc, out, err = run("generate", "--model", DEMO, "--prompt-ids", "1,2,3", "--max-new", "3")
        lines = precision_lines(err)
        check(rc == 0 and len(lines) == 1 and lines[0].startswith("precision: %s (auto: " % expect) and len(out.split()) == 3,
              "generate: %s, stdout %r" % (lines, out))
        p = subprocess.Popen([BIN, "serve", "--model", DEMO, "--port", "0"], stdout=subprocess.PIPE, env=ENV,
                             stderr=subprocess.PIPE, text=True)
        first = p.stdout.readline()
        p.send_signal(signal.SIGTERM)
        _, serr = p.communicate(timeout=60)
        lines = precision_lines(serr)
        check("listening" in first and len(lines) == 1 and lines[0].startswith("precision: %s (auto: " % expect),
              "serve: %s / %r" % (lines, first.strip()))

        # 3: explicit 16-bit paths
        for fmt in ("bf16", "f16"):
            for ask in (["--precision", fmt], ["--" + fmt]):
                rc, out, err = run(*ev, *ask)
                what = " ".join(ask)
                if native[fmt]:
                    check(rc == 0 and precision_lines(err) == ["precision: %s (%s: %s)" % (fmt, what, isa[fmt])],
                          "%s native: %s" % (what, precision_lines(err) or err.strip()[-200:]))
                else:
                    check(rc == 1 and isa[fmt] in err and "--precision auto or f32" in err and "--allow-emulated" in err
                          and not out, "%s refused without %s: %s" % (what, isa[fmt], err.strip()[-300:]))
            rc, out, err = run(*ev, "--precision", fmt, "--allow-emulated")
            loss = loss_of(out) if rc == 0 else float("nan")
            check(rc == 0 and abs(loss - f32_loss) <= 0.01 * f32_loss and precision_lines(err)[0].startswith("precision: %s (" % fmt)
                  and (native[fmt] or "emulated" in precision_lines(err)[0]),
                  "--precision %s --allow-emulated: loss %.6f vs f32 %.6f, %s" % (fmt, loss, f32_loss, precision_lines(err)))
        for a, b in ((["--bf16"], ["--precision", "f32"]), (["--f16"], ["--precision", "bf16"]), (["--bf16"], ["--f16"])):
            rc, out, err = run(*ev, *a, *b)
            check(rc == 2 and a[0] in err and b[0] in err and "exclude each other" in err,
                  "%s with %s refused: %s" % (" ".join(a), " ".join(b), err.strip()[-200:]))
        rc, out, err = run(*ev, "--bf16", "--precision", "bf16", "--allow-emulated")
        check(rc == 0, "--bf16 with --precision bf16 (the same) accepted: %s" % err.strip()[-200:])
        rc, out, err = run(*ev, "--precision", "f8")
        check(rc == 2 and "auto|f32|bf16|f16" in err, "--precision f8 refused with the choices: %s" % err.strip()[-200:])
        rc, out, err = run(*ev, "--quantize", "q8_0")
        check(rc == 0 and precision_lines(err) == ["precision: f32 on q8_0 weights (auto: --quantize multiplies in f32)"],
              "auto with --quantize q8_0: %s" % (precision_lines(err) or err.strip()[-200:]))
        rc, out, err = run(*ev, "--quantize", "nf4", "--precision", "f16", "--allow-emulated")
        check(rc == 1 and "--quantize nf4" in err and "--precision f16" in err, "--quantize nf4 with f16 refused: %s" % err.strip()[-200:])
        for cmd in ("train", "eval", "generate", "serve"):
            rc, out, err = run(cmd, "--help")
            check(rc == 0 and "--precision P" in out and "--allow-emulated" in out, "%s --help lists --precision" % cmd)
    print("%d failure(s)" % failures if failures else "OK")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
