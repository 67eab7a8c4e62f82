#!/usr/bin/env python3
"""`peft serve` with real clients: the `openai` package, curl, and httpx for the adapter routes.

Oracle: `peft generate` with the same adapter, prompt, temperature, top_p and seed (its text
after the prompt); for chats, transformers' apply_chat_template (ChatML, the same template text
the server gets as a file) and the tokenizers library's ids and decoding around
`peft generate --prompt-ids`. Checked:
- /v1/models lists the base model then the adapters; a wrong API key is 401;
- 24 concurrent requests (completions and chats, streamed and not, greedy and sampled) over the
  base model and two adapters: each text equals its oracle, and the adapters change the output;
- curl, streamed: the server-sent events end with [DONE] and their texts join into the oracle's;
- stop strings: the text is the oracle's cut before the first stop string, finish "stop";
- hot swap while traffic runs: a third adapter loaded answers as its oracle; unloading an
  adapter while a stream of it runs leaves that stream identical to its oracle, then the name
  is 404 and gone from /v1/models; loading it again serves it again;
- SIGTERM: exit code 0 (under ASan, with no leak reported by LeakSanitizer).

Exit 0 = pass, 1 = fail, 77 = skipped (no openai / transformers package).
"""
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_util as su  # noqa: E402

try:
    import httpx2 as httpx
    import openai
    from transformers import PreTrainedTokenizerFast
except ImportError as e:
    su.skip("no %s (pip install -r requirements.txt)" % e.name)

KEY = "sk-test-serve"
PROMPTS = ["ROMEO:", "First Citizen:\nBefore we proceed", "O, what a"]
check = su.check


def complete(client, model, prompt, stream, **kw):
    if not stream:
        r = client.completions.create(model=model, prompt=prompt, **kw)
        return r.choices[0].text, r.choices[0].finish_reason
    text, finish = "", None
    for ch in client.completions.create(model=model, prompt=prompt, stream=True, **kw):
        text += ch.choices[0].text
        finish = ch.choices[0].finish_reason or finish
    return text, finish


def chat(client, model, messages, stream, **kw):
    if not stream:
        r = client.chat.completions.create(model=model, messages=messages, **kw)
        return r.choices[0].message.content, r.choices[0].finish_reason
    text, finish = "", None
    for ch in client.chat.completions.create(model=model, messages=messages, stream=True, **kw):
        text += ch.choices[0].delta.content or ""
        finish = ch.choices[0].finish_reason or finish
    return text, finish


def main():
    su.need_cli()
    work = os.path.join(su.BUILD, "serve_test")
    os.makedirs(work, exist_ok=True)
    ad = su.train_adapters(work, 3)
    tpl = os.path.join(work, "chatml.jinja")
    with open(tpl, "w") as f:
        f.write(su.CHATML)
    hf = PreTrainedTokenizerFast(tokenizer_file=os.path.join(su.MODEL, "tokenizer.json"))
    hf.chat_template = su.CHATML
    dirs = {"demo": None, "a1": ad[0], "a2": ad[1]}

    def chat_oracle(model, messages, **kw):
        text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = hf(text, add_special_tokens=False)["input_ids"]
        new = su.generate_ids(ids, dirs.get(model) or (ad[2] if model == "a3" else None), **kw)
        full = hf.decode(ids + new, skip_special_tokens=True)
        return full[len(hf.decode(ids, skip_special_tokens=True)):]

    srv = su.Server(["--adapter", "a1=" + ad[0], "--adapter", "a2=" + ad[1], "--chat-template", tpl, "--api-key", KEY])
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0, timeout=30)
        ids = [m.id for m in client.models.list().data]
        check(ids == ["demo", "a1", "a2"], "/v1/models lists demo, a1, a2: %s" % ids)
        try:
            openai.OpenAI(base_url=srv.url + "/v1", api_key="sk-wrong", max_retries=0).models.list()
            check(False, "a wrong API key is refused")
        except openai.AuthenticationError:
            check(True, "a wrong API key is 401")

        # 24 concurrent requests: 3 models x 3 prompts (+ 3 chats), greedy and sampled, half streamed
        jobs = []
        for mi, model in enumerate(dirs):
            for pi, prompt in enumerate(PROMPTS):
                kw = dict(max_tokens=12, temperature=0.0 if pi == 0 else 0.9, top_p=1.0 if pi < 2 else 0.8,
                          seed=7 * pi + mi)
                jobs.append(("completion", model, prompt, kw))
            jobs.append(("chat", model, [{"role": "user", "content": "Say a word %d" % mi}],
                         dict(max_tokens=10, temperature=0.7, top_p=0.95, seed=mi)))
        jobs = [(j, s) for j in jobs for s in (False, True)]
        expect = {}
        for (kind, model, p, kw), _ in jobs:
            key = (kind, model, str(p))
            if key not in expect:
                gkw = dict(max_new=kw["max_tokens"], temperature=kw["temperature"], top_p=kw["top_p"], seed=kw["seed"])
                expect[key] = su.generate(p, dirs[model], **gkw) if kind == "completion" else chat_oracle(model, p, **gkw)

        def run(job):
            (kind, model, p, kw), stream = job
            return (complete if kind == "completion" else chat)(client, model, p, stream, **kw)

        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            got = list(pool.map(run, jobs))
        n_same = sum(got[i][0] == expect[(k, m, str(p))] for i, ((k, m, p, _), _) in enumerate(jobs))
        for i, ((kind, model, p, kw), stream) in enumerate(jobs):
            if got[i][0] != expect[(kind, model, str(p))]:
                print("  %s %s %r stream=%s: got %r want %r" % (kind, model, p, stream, got[i][0],
                                                               expect[(kind, model, str(p))]))
        check(n_same == len(jobs), "%d/%d concurrent responses equal peft generate's" % (n_same, len(jobs)))
        greedy = {m: expect[("completion", m, PROMPTS[0])] for m in dirs}
        check(len(set(greedy.values())) == 3, "the adapters change the greedy text: %s" % greedy)

        # curl, streamed: the SSE chunks' texts join into the oracle's text
        want = expect[("completion", "a2", PROMPTS[1])]
        job = [j for j, _ in jobs if j[0] == "completion" and j[1] == "a2" and j[2] == PROMPTS[1]][0]
        if shutil.which("curl"):
            out = subprocess.run(["curl", "-sN", "--max-time", "60", srv.url + "/v1/completions", "-H",
                                  "Authorization: Bearer " + KEY, "-d", json.dumps(dict(job[3], model="a2",
                                  prompt=PROMPTS[1], stream=True))], capture_output=True, timeout=90).stdout.decode()
            events = [ln[6:] for ln in out.split("\n") if ln.startswith("data: ")]
            text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1])
            check(events[-1:] == ["[DONE]"] and text == want, "curl stream: %r, want %r" % (text, want))

        # stop strings: cut before the first one
        want = expect[("completion", "a1", PROMPTS[0])]
        stop = want[4:6]
        text, finish = complete(client, "a1", PROMPTS[0], True, max_tokens=12, temperature=0.0, stop=[stop, "zzzz"])
        check(text == want[:want.index(stop)] and finish == "stop",
              "stop %r: %r (%s), want %r" % (stop, text, finish, want[:want.index(stop)]))

        # hot swap during traffic: a3 loaded, a1 unloaded while a stream of a1 runs
        stop_traffic = threading.Event()
        traffic_bad = []

        def traffic():
            for i in range(200):
                if stop_traffic.is_set():
                    break
                t, _ = complete(client, "a2", PROMPTS[1], False, max_tokens=8, temperature=0.9, seed=11)
                if t != traffic_want:
                    traffic_bad.append(t)

        traffic_want = su.generate(PROMPTS[1], ad[1], max_new=8, temperature=0.9, seed=11)
        long_want = su.generate(PROMPTS[2], ad[0], max_new=48, temperature=0.8, seed=5)
        http = httpx.Client(base_url=srv.url, headers={"Authorization": "Bearer " + KEY}, timeout=120)
        th = threading.Thread(target=traffic)
        th.start()
        r = http.post("/v1/load_lora_adapter", json={"lora_name": "a3", "lora_path": ad[2]})
        check(r.status_code == 200, "load a3 during traffic: %d %s" % (r.status_code, r.text))
        text, _ = complete(client, "a3", PROMPTS[0], False, max_tokens=12, temperature=0.0)
        check(text == su.generate(PROMPTS[0], ad[2], max_new=12), "a3 answers as peft generate --adapter ad3")
        stream = client.completions.create(model="a1", prompt=PROMPTS[2], stream=True, max_tokens=48, temperature=0.8,
                                           seed=5)
        it = iter(stream)
        first = next(it).choices[0].text
        r = http.post("/v1/unload_lora_adapter", json={"lora_name": "a1"})
        check(r.status_code == 200, "unload a1 while its stream runs: %d %s" % (r.status_code, r.text))
        rest = "".join(ch.choices[0].text for ch in it)
        check(first + rest == long_want, "the a1 stream in flight is unaffected by the unload")
        try:
            client.completions.create(model="a1", prompt="x", max_tokens=2)
            check(False, "an unloaded adapter is refused")
        except openai.NotFoundError:
            check(True, "an unloaded adapter is 404")
        ids = [m.id for m in client.models.list().data]
        check(ids == ["demo", "a2", "a3"], "/v1/models after the swap: %s" % ids)
        r = http.post("/v1/load_lora_adapter", json={"lora_name": "a2", "lora_path": ad[0]})
        check(r.status_code == 409, "loading a name in use is 409: %d" % r.status_code)
        r = http.post("/v1/load_lora_adapter", json={"lora_name": "bad", "lora_path": work + "/nonexistent"})
        check(r.status_code == 400, "loading a missing directory is 400: %d" % r.status_code)
        r = http.post("/v1/load_lora_adapter", json={"lora_name": "a1", "lora_path": ad[0]})
        text, _ = complete(client, "a1", PROMPTS[0], False, max_tokens=12, temperature=0.0)
        check(r.status_code == 200 and text == greedy["a1"], "a1 loaded again serves a1")
        stop_traffic.set()
        th.join(timeout=300)
        check(not th.is_alive() and not traffic_bad, "the a2 traffic during the swaps stayed identical (%d bad)" %
              len(traffic_bad))
        http.close()
    finally:
        rc, err = srv.stop()
    check(rc == 0, "SIGTERM: exit code %d%s" % (rc, "" if rc == 0 else "\n" + err[-3000:]))
    return su.result()


if __name__ == "__main__":
    sys.exit(main())
