"""Shared by tests/serve/test_*.py and bench/bench_serve.py: training small adapters on the
demo model with `peft train`, starting `peft serve` on a free loopback port, and the oracle
(`peft generate` with the same adapter, prompt, sampling parameters and seed)."""
import os
import select
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("PEFT_SRC") or os.path.dirname(os.path.dirname(HERE))
BUILD = os.environ.get("PEFT_BUILD") or os.path.join(SRC, "build")
PEFT_BIN = os.environ.get("PEFT_BIN") or os.path.join(BUILD, "peft")
MODEL = os.path.join(SRC, "models", "demo")
DATA = os.path.join(SRC, "data", "demo", "train.jsonl")
# The standard ChatML template (the demo model's tokenizer_config.json has none): the server
# gets it as a file, transformers gets the same text, so the rendering is checked too.
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def skip(why):
    print("SKIP: " + why)
    sys.exit(77)


failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def result():
    """The test's exit code: 1 if a check failed."""
    if failures:
        print("%d check(s) failed" % len(failures))
    return 1 if failures else 0


def need_cli():
    if not os.path.exists(PEFT_BIN):
        skip(PEFT_BIN + " is not built")


def train_adapters(work, n):
    """n LoRA adapters of the demo model (q_proj,v_proj, r 4, 4 steps, learning rates 0.01 * i and
    different seeds), so each one's greedy output differs from the base model's and the others'."""
    dirs = []
    for i in range(n):
        d = os.path.join(work, "ad%d" % (i + 1))
        if not os.path.exists(os.path.join(d, "adapter_model.safetensors")):
            subprocess.run([PEFT_BIN, "train", "--model", MODEL, "--data", DATA, "--out", d, "--target", "q_proj,v_proj",
                            "--rank", "4", "--alpha", "8", "--steps", "4", "--batch", "2", "--seq-len", "64", "--lr",
                            "%g" % (0.01 * (i + 1)), "--seed", str(i + 1)], check=True, capture_output=True, timeout=300)
        dirs.append(d)
    return dirs


class Server:
    """`peft serve` on 127.0.0.1 and a free port (it prints the port it bound)."""

    def __init__(self, args, timeout=60):
        self.p = subprocess.Popen([PEFT_BIN, "serve", "--model", MODEL, "--port", "0"] + args, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        deadline = time.time() + timeout
        line = ""
        while time.time() < deadline and self.p.poll() is None:
            r, _, _ = select.select([self.p.stdout], [], [], 0.5)
            if r:
                line = self.p.stdout.readline()
                break
        if "listening on http://" not in line:
            self.p.kill()
            raise RuntimeError("peft serve did not start: %r %s" % (line, self.p.stderr.read()))
        self.port = int(line.split("http://")[1].split()[0].rsplit(":", 1)[1])
        self.url = "http://127.0.0.1:%d" % self.port

    def stop(self, timeout=60):
        """SIGTERM; returns (exit code, stderr)."""
        self.p.terminate()
        try:
            _, err = self.p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            _, err = self.p.communicate()
            return -9, err
        return self.p.returncode, err


def generate(prompt, adapter=None, max_new=16, temperature=0.0, top_p=1.0, seed=0):
    """The text `peft generate` adds after the prompt."""
    cmd = [PEFT_BIN, "generate", "--model", MODEL, "--prompt", prompt, "--max-new", str(max_new), "--temperature",
           repr(temperature), "--top-p", repr(top_p), "--seed", str(seed)]
    if adapter:
        cmd += ["--adapter", adapter]
    out = subprocess.run(cmd, check=True, capture_output=True, timeout=120).stdout.decode()
    assert out.startswith(prompt) and out.endswith("\n"), out
    return out[len(prompt):-1]


def generate_ids(ids, adapter=None, max_new=16, temperature=0.0, top_p=1.0, seed=0):
    """The new ids `peft generate --prompt-ids` gives."""
    cmd = [PEFT_BIN, "generate", "--model", MODEL, "--prompt-ids", ",".join(map(str, ids)), "--max-new", str(max_new),
           "--temperature", repr(temperature), "--top-p", repr(top_p), "--seed", str(seed)]
    if adapter:
        cmd += ["--adapter", adapter]
    out = subprocess.run(cmd, check=True, capture_output=True, timeout=120).stdout.decode()
    return [int(t) for t in out.split()]
