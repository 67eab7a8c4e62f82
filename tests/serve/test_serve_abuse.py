#!/usr/bin/env python3
"""`peft serve` under bad and hostile clients: after each one the server still answers /health
and a normal request still equals `peft generate` (the oracle) with the same prompt and seed.

- malformed JSON, a non-object body, an empty body, invalid UTF-8 -> 400; a 10 MB body -> 413
  (the --max-body limit); an unknown model -> 404; out-of-range parameters (temperature < 0,
  top_p 0, n 2, max_tokens above --max-tokens, 5 stop strings, a fractional seed, a non-string
  prompt, messages without a template) -> 400 naming the field; wrong method 405, unknown route 404;
  every error in OpenAI's {"error": {"message", "type", "param", "code"}} shape;
- a slow client (1 byte / 100 ms), idle connections, a request line of garbage, and clients
  that disconnect mid-stream;
- a full queue (--max-queue 2): some requests get 429, the others are answered correctly;
- SIGTERM while a stream runs: the stream completes, the exit code is 0 (under ASan: no leak).

Exit 0 = pass, 1 = fail, 77 = skipped (no httpx, the openai client's HTTP library).
"""
import concurrent.futures
import json
import os
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import serve_util as su  # noqa: E402

try:
    import httpx2 as httpx
except ImportError as e:
    su.skip("no %s (pip install -r requirements.txt)" % e.name)

check = su.check
PROMPT = "ROMEO:"


def is_error(r, status, param=None):
    try:
        e = r.json()["error"]
    except Exception:
        return False
    return (r.status_code == status and isinstance(e.get("message"), str) and isinstance(e.get("type"), str) and
            "code" in e and (param is None or e.get("param") == param))


def raw(port, data, read=True, timeout=10):
    """Sends bytes on a fresh connection; returns what came back (until close or timeout)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        out = b""
        while read:
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            if not b:
                break
            out += b
        return out
    finally:
        s.close()


def main():
    su.need_cli()
    want = su.generate(PROMPT, None, max_new=12, temperature=0.9, seed=3)
    body = {"model": "demo", "prompt": PROMPT, "max_tokens": 12, "temperature": 0.9, "seed": 3}
    srv = su.Server(["--max-body", "1048576", "--max-tokens", "256", "--timeout", "3"])
    http = httpx.Client(base_url=srv.url, timeout=60)

    def alive(what):
        h = http.get("/health")
        r = http.post("/v1/completions", json=body)
        ok = h.status_code == 200 and r.status_code == 200 and r.json()["choices"][0]["text"] == want
        check(ok, "after %s: /health and a request still answer correctly" % what)

    try:
        alive("start")
        post = lambda data, path="/v1/completions": http.post(path, content=data,  # noqa: E731
                                                              headers={"Content-Type": "application/json"})
        check(is_error(post(b'{"model": "demo", "prompt": '), 400), "malformed JSON is 400")
        check(is_error(post(b'[1, 2]'), 400), "a JSON array body is 400")
        check(is_error(post(b''), 400), "an empty body is 400")
        check(is_error(post(b'{"model": "demo", "prompt": "\xff\xfe bad"}'), 400), "invalid UTF-8 is 400")
        check(is_error(post(b'{"model": "demo", "prompt": "\xed\xa0\x80"}'), 400), "a UTF-8 surrogate is 400")
        big = b'{"model": "demo", "prompt": "' + b"a" * (10 << 20) + b'"}'
        check(is_error(post(big), 413), "a 10 MB body is 413")
        alive("the 10 MB body")
        bad = [({"model": "nope"}, 404, "model"), ({"temperature": -0.5}, 400, "temperature"),
               ({"temperature": 2.5}, 400, "temperature"), ({"top_p": 0}, 400, "top_p"), ({"top_p": 1.5}, 400, "top_p"),
               ({"n": 2}, 400, "n"), ({"max_tokens": 257}, 400, "max_tokens"), ({"max_tokens": 0}, 400, "max_tokens"),
               ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"), ({"stop": [""]}, 400, "stop"),
               ({"stop": 3}, 400, "stop"), ({"seed": 1.5}, 400, "seed"), ({"seed": -1}, 400, "seed"),
               ({"prompt": ["a"]}, 400, "prompt"), ({"model": 5}, 400, "model"), ({"stream": "yes"}, 400, "stream")]
        for change, status, param in bad:
            r = http.post("/v1/completions", json=dict(body, **change))
            check(is_error(r, status, param), "%s -> %d (param %s): %d %s" % (change, status, param, r.status_code,
                                                                              r.text[:120]))
        r = http.post("/v1/chat/completions", json={"model": "demo", "messages": [{"role": "user", "content": "x"}]})
        check(is_error(r, 400, "messages"), "a chat without a template is 400")
        r = http.post("/v1/completions", json=dict(body, prompt="a b c " * 100, max_tokens=256))
        check(is_error(r, 400), "prompt + max_tokens beyond the model's context (512) is 400: %d" % r.status_code)
        check(is_error(http.get("/v1/completions"), 405), "GET /v1/completions is 405")
        check(is_error(http.get("/v2/nothing"), 404), "an unknown route is 404")
        check(is_error(http.post("/v1/load_lora_adapter", json={"lora_name": "x"}), 400, "lora_path"),
              "load without lora_path is 400")
        check(is_error(http.post("/v1/unload_lora_adapter", json={"lora_name": "x"}), 404, "lora_name"),
              "unload of an unknown adapter is 404")
        alive("the bad requests")

        raw(srv.port, b"GARBAGE\r\n\r\n")
        raw(srv.port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n{")
        alive("garbage request lines")

        # a slow client (1 byte / 100 ms for 3 s) and idle connections while others are served
        def slow():
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            req = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n" + json.dumps(body).encode()
            try:
                for b in req[:30]:
                    s.send(bytes([b]))
                    time.sleep(0.1)
            except OSError:
                pass
            s.close()

        idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(8)]
        th = threading.Thread(target=slow)
        th.start()
        t0 = time.time()
        alive("a slow client and 8 idle connections")
        check(time.time() - t0 < 5, "a request beside the slow client took %.2f s" % (time.time() - t0))
        th.join()
        for s in idle:
            s.close()

        # clients that leave mid-stream
        stream_req = json.dumps(dict(body, stream=True, max_tokens=200, temperature=0.0)).encode()
        for i in range(5):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(stream_req) + stream_req)
            got = b""
            while b"data: " not in got:
                got += s.recv(4096)
            s.close()
        alive("5 clients disconnecting mid-stream")
    finally:
        http.close()
        rc, err = srv.stop()
    check(rc == 0, "SIGTERM: exit code %d%s" % (rc, "" if rc == 0 else "\n" + err[-3000:]))

    # a full queue: 429 for some, correct answers for the rest
    srv = su.Server(["--max-queue", "2", "--max-batch", "1"])
    try:
        want32 = su.generate(PROMPT, None, max_new=32, temperature=0.9, seed=3)

        def one(_):
            with httpx.Client(base_url=srv.url, timeout=60) as c:
                return c.post("/v1/completions", json=dict(body, max_tokens=32))

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            rs = list(pool.map(one, range(8)))
        busy = sum(is_error(r, 429) for r in rs)
        good = sum(r.status_code == 200 and r.json()["choices"][0]["text"] == want32 for r in rs)
        check(busy >= 1 and busy + good == 8, "--max-queue 2, 8 at once: %d x 429, %d correct" % (busy, good))

        # SIGTERM while a stream runs: the stream still ends with [DONE]
        result = {}

        def stream():
            with httpx.Client(base_url=srv.url, timeout=60) as c:
                with c.stream("POST", "/v1/completions", json=dict(body, stream=True, max_tokens=400)) as r:
                    text = ""
                    for piece in r.iter_text():
                        text += piece
                        first.set()
                    result["text"] = text

        first = threading.Event()
        th = threading.Thread(target=stream)
        th.start()
        first.wait(60)  # 400 tokens take ~0.3 s here: SIGTERM comes while they are being generated
        rc, err = srv.stop()
        th.join(timeout=60)
        check(rc == 0, "SIGTERM during a stream: exit code %d%s" % (rc, "" if rc == 0 else "\n" + err[-3000:]))
        check("1 request(s) running" in err, "the stream was running at SIGTERM: %r" % err[-200:])
        check(result.get("text", "").rstrip().endswith("data: [DONE]"),
              "the stream in flight at SIGTERM ended with [DONE]: %r" % result.get("text", "")[-150:])
    finally:
        if srv.p.poll() is None:
            srv.stop()
    return su.result()


if __name__ == "__main__":
    sys.exit(main())
