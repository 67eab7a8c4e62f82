#!/usr/bin/env python3
"""peft.c's chat-template rendering against transformers' apply_chat_template, byte for byte.

For each template -- the real ones of ../shared/tokenizers/{llama3,qwen3}/tokenizer_config.json
and hand-written ones in the style of Llama-2, Mistral, ChatML (with a default system prompt),
Gemma, Phi-3, Zephyr, plus one that exercises the rest of the supported Jinja subset -- a model
directory is written (the tokenizer.json of ../shared plus a tokenizer_config.json carrying the
template), every conversation is rendered by
    $PEFT_BIN tokenize --model DIR --chat F --render [--generation-prompt]
and compared with tokenizer.apply_chat_template(messages, tools=..., tokenize=False,
add_generation_prompt=..., **chat_template_kwargs). A conversation the template rejects
(raise_exception) must make peft fail too. Then invalid and hostile templates (unterminated
tags, unknown filters, unsupported statements, deep nesting, huge loops) must be refused with a
message naming tokenizer_config.json and the line, and in bounded time.

Exit 0 = pass, 1 = fail, 77 = skipped (transformers, ../shared or the CLI missing).
"""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("PEFT_SRC") or os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("PEFT_SHARED") or os.path.join(SRC, "..", "shared")
PEFT_BIN = os.environ.get("PEFT_BIN") or os.path.join(SRC, "build", "peft")
TOKS = os.path.join(SHARED, "tokenizers")


def skip(why):
    print("SKIP: " + why)
    sys.exit(77)


try:
    import transformers
except ImportError as e:
    skip("transformers not importable (%s)" % e)
for d in ("llama2", "llama3", "qwen3"):
    if not os.path.exists(os.path.join(TOKS, d, "tokenizer.json")):
        skip("no %s" % os.path.join(TOKS, d, "tokenizer.json"))
if not os.access(PEFT_BIN, os.X_OK):
    skip("no CLI at %s" % PEFT_BIN)
transformers.logging.set_verbosity_error()

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL: " + msg)


def shared_template(name):
    with open(os.path.join(TOKS, name, "tokenizer_config.json")) as f:
        return json.load(f)["chat_template"]


LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = "
    "'<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}"
    "{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}")
MISTRAL = (
    "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content'] %}\n"
    "    {%- set loop_messages = messages[1:] %}\n{%- else %}\n    {%- set loop_messages = messages %}\n{%- endif %}\n\n"
    "{{- bos_token }}\n{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}\n"
    "    {%- endif %}\n    {%- if message['role'] == 'user' %}\n"
    "        {%- if loop.last and system_message is defined %}\n"
    "            {{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}\n"
    "        {%- else %}\n            {{- '[INST] ' + message['content'] + '[/INST]' }}\n        {%- endif %}\n"
    "    {%- elif message['role'] == 'assistant' %}\n        {{- ' ' + message['content'] + eos_token}}\n"
    "    {%- else %}\n        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}\n"
    "    {%- endif %}\n{%- endfor %}\n")
CHATML_DEFAULT = (
    "{%- if messages[0]['role'] == 'system' %}\n    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\") %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- endif %}\n"
    "{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n")
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation "
    "roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}"
    "{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\\n' + "
    "message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}")
PHI3 = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\\n' + message['content'] + '<|end|>\\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\\n' + message['content'] + '<|end|>\\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\\n' + message['content'] + '<|end|>\\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|assistant|>\\n' }}{% else %}{{ eos_token }}{% endif %}")
ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")
# the rest of the subset: namespace, selectattr/map/join, tojson(indent), slicing, dict literals,
# string methods and tests, ~, comparisons, loop.* and loop controls, set blocks, comments
KITCHEN = """{#- a comment -#}
{%- set ns = namespace(users=0, last_role=none) %}
{%- set roles = {'user': 'U', 'assistant': 'A', 'system': 'S', 'tool': 'T'} %}
{%- for m in messages %}
  {%- if m.role == 'user' %}{% set ns.users = ns.users + 1 %}{% endif %}
  {%- set ns.last_role = m.role %}
{%- endfor %}
[{{ ns.users }} user turns, last {{ ns.last_role | upper }}; {{ messages | map(attribute='role') | unique | list | join('/') }}]
{% for m in messages if m.role != 'tool' -%}
  {{ loop.index }}/{{ loop.length }} {{ roles[m.role] ~ ':' }}{{ ' first' if loop.first }}{{ ' last' if loop.last }}
  {%- if m.content is string and m.content.strip() %} {{ m.content.strip().split('\\n')[-1][:40] | replace('<', '&lt;') }}
  {%- elif m.content is string %} (empty)
  {%- else %} {{ m.content | tojson }}{% endif %}
  {%- if m.tool_calls is defined %}
    {%- for call in m.tool_calls %} -> {{ call.function.name }}({{ call.function.arguments | tojson(indent=1) }}){% endfor %}
  {%- endif %}
  {%- if loop.index > 6 %}{% break %}{% endif %}
{% endfor -%}
{%- set tail %}{{ messages[-1].role if messages else 'none' }}{% endset -%}
tail={{ tail | title }} reversed={{ (messages | map(attribute='role') | list)[::-1] | join(',') }}
{%- if tools %} tools={{ tools | map(attribute='function') | map(attribute='name') | join(',') }} {{ tools[0] | tojson }}{% endif %}
{%- if add_generation_prompt %}
<gen {{- ' thinking' if enable_thinking is not defined or enable_thinking else ' plain' }}>
{%- endif %}"""

TEMPLATES = {
    "llama3": ("llama3", shared_template("llama3")),
    "qwen3": ("qwen3", shared_template("qwen3")),
    "llama2": ("llama2", LLAMA2),
    "mistral": ("llama2", MISTRAL),
    "chatml": ("qwen3", CHATML_DEFAULT),
    "gemma": ("llama2", GEMMA),
    "phi3": ("llama2", PHI3),
    "zephyr": ("llama2", ZEPHYR),
    "kitchen": ("llama2", KITCHEN),
}

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
                          "required": ["city"]}}}
CONVS = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
    {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
                  {"role": "assistant", "content": "Hello."}, {"role": "user", "content": " Bye \n"},
                  {"role": "assistant", "content": "  Ciao.  "}]},
    {"messages": [{"role": "user", "content": "Only a question?"}]},
    {"messages": [{"role": "user", "content": "héllo wörld — ✓ 日本語 🙂\ttab"}, {"role": "assistant", "content": "ünïcödé\n\n"},
                  {"role": "user", "content": ""}]},
    {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
                  {"role": "user", "content": "and 3+3?"}, {"role": "assistant", "content": "<think>\nagain\n</think>\n\n6"}]},
    {"messages": [{"role": "user", "content": "why?"}, {"role": "assistant", "content": "because", "reasoning_content": "let me think"}]},
    {"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "q"}]},
    {"messages": [{"role": "user", "content": "Weather in Paris?"},
                  {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "get_weather",
                                                                       "arguments": {"city": "Paris", "unit": "c"}}}]},
                  {"role": "tool", "content": "{\"temp\": 21}"}, {"role": "tool", "content": "sunny"},
                  {"role": "assistant", "content": "21 C and sunny."}],
     "tools": [WEATHER]},
    {"messages": [{"role": "user", "content": "no thinking please"}], "chat_template_kwargs": {"enable_thinking": False}},
    {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},  # rejected by alternating templates
    {"messages": [{"role": "user", "content": "x " * 200 + "<tool_response>"}, {"role": "assistant", "content": "'quotes' \"and\" \\"}]},
]


def hf_render(tok, conv, gen):
    return tok.apply_chat_template(conv["messages"], tools=conv.get("tools"), tokenize=False, add_generation_prompt=gen,
                                   **conv.get("chat_template_kwargs", {}))


def write_model(root, name, tok_dir, template):
    d = os.path.join(root, name)
    os.makedirs(d)
    with open(os.path.join(TOKS, tok_dir, "tokenizer.json"), "rb") as f:
        data = f.read()
    with open(os.path.join(d, "tokenizer.json"), "wb") as f:
        f.write(data)
    with open(os.path.join(TOKS, tok_dir, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    cfg["chat_template"] = template
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f)
    return d


def peft_render(model, convs, gen, tmp):
    path = os.path.join(tmp, "conv.jsonl")
    with open(path, "w") as f:
        for c in convs:
            f.write(json.dumps(c) + "\n")
    cmd = [PEFT_BIN, "tokenize", "--model", model, "--chat", path, "--render"] + (["--generation-prompt"] if gen else [])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def main():
    n_cmp = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, (tok_dir, template) in TEMPLATES.items():
            model = write_model(tmp, name, tok_dir, template)
            tok = transformers.AutoTokenizer.from_pretrained(model)
            for gen in (False, True):
                ok_convs, want, bad = [], [], []
                for conv in CONVS:
                    try:
                        want.append(hf_render(tok, conv, gen))
                        ok_convs.append(conv)
                    except Exception as e:  # the template raised: peft must refuse the conversation too
                        bad.append((conv, str(e)))
                r = peft_render(model, ok_convs, gen, tmp)
                if r.returncode != 0:
                    fail("%s gen=%d: peft exit %d: %s" % (name, gen, r.returncode, r.stderr.strip()[-500:]))
                    continue
                got = [json.loads(line) for line in r.stdout.splitlines()]
                if len(got) != len(want):
                    fail("%s gen=%d: %d renderings for %d conversations" % (name, gen, len(got), len(want)))
                    continue
                for i, (g, w) in enumerate(zip(got, want)):
                    n_cmp += 1
                    if g != w:
                        fail("%s gen=%d conversation %d:\n  peft %r\n  hf   %r" % (name, gen, i, g, w))
                for conv, msg in bad:
                    r = peft_render(model, [conv], gen, tmp)
                    if r.returncode != 1 or "conv.jsonl:1" not in r.stderr:
                        fail("%s gen=%d: HF raised %r but peft exit %d: %s" % (name, gen, msg, r.returncode, r.stderr.strip()))
                    n_cmp += 1
            print("%-8s ok: %d conversations x 2, %d refused by the template" % (name, len(ok_convs), len(bad)))
        print("compared %d renderings / refusals with transformers %s" % (n_cmp, transformers.__version__))

        # invalid templates: jinja2 refuses them too; peft names tokenizer_config.json and the line
        import jinja2
        invalid = {
            "{% for m in messages %}{{ m.content }}": "never closed",
            "hello\n{{ messages[0].content ": "unterminated",
            "{{ messages | frobnicate }}": "unknown filter",
            "{% if messages %}x{% endfor %}": "unexpected",
            "{{ 'abc }}": "unterminated string",
        }
        for tpl, what in invalid.items():
            try:
                jinja2.Environment().from_string(tpl)
                fail("jinja2 accepts the invalid template %r (bad test case)" % tpl)
            except jinja2.TemplateSyntaxError:
                pass
        # valid Jinja peft.c does not interpret: refused, never rendered as something else
        unsupported = dict(invalid)
        unsupported["{% if x is shiny %}{% endif %}"] = "unknown test"  # jinja2 fails only when it runs the test
        unsupported["{% macro m() %}x{% endmacro %}{{ m() }}"] = "unsupported statement"
        unsupported["{{ strftime_now('%Y') }} <|im_start|>"] = "unknown function"
        unsupported["{% for m in messages %}{{ loop.cycle('a', 'b') }}{% endfor %}"] = "unknown method"
        unsupported["{{ " + "(" * 400 + "1" + ")" * 400 + " }}"] = "nested more than"
        for i, (tpl, what) in enumerate(unsupported.items()):
            model = write_model(tmp, "bad%d" % i, "llama2", tpl)
            r = peft_render(model, CONVS[:1], False, tmp)
            if r.returncode != 1 or "tokenizer_config.json" not in r.stderr or "line" not in r.stderr or what not in r.stderr:
                fail("template %r: exit %d, %r (want a refusal naming tokenizer_config.json, the line and %r)"
                     % (tpl[:60], r.returncode, r.stderr.strip(), what))
        # hostile templates: bounded time and memory, an error
        hostile = ["{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}",
                   "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
                   "{{ range(10000000) | length }}"]
        for i, tpl in enumerate(hostile):
            model = write_model(tmp, "hostile%d" % i, "llama2", tpl)
            r = peft_render(model, CONVS[:1], False, tmp)
            if r.returncode != 1 or "chat template" not in r.stderr:
                fail("hostile template %r: exit %d, %r" % (tpl[:60], r.returncode, r.stderr.strip()[-300:]))
        print("refused %d invalid/unsupported and %d hostile templates" % (len(unsupported), len(hostile)))
    if failures:
        print("%d failure(s)" % len(failures))
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
