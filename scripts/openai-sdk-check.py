"""Client-side check with the official OpenAI Python SDK against a running Squad.

    pip install openai
    squad serve --demo --port 8000 &
    python3 scripts/openai-sdk-check.py http://127.0.0.1:8000/v1

Exits non-zero on the first mismatch.
"""
import sys

from openai import APIError, NotFoundError, OpenAI

base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/v1"
client = OpenAI(base_url=base, api_key="unused-in-demo")

r = client.chat.completions.create(
    model="groq/openai/gpt-oss-120b", messages=[{"role": "user", "content": "Hello from the SDK"}]
)
assert r.choices[0].message.content.endswith("Hello from the SDK"), r
assert r.usage.total_tokens > 0, r.usage

text, usage = "", None
for chunk in client.chat.completions.create(
    model="gemini/gemini-3.5-flash",
    stream=True,
    stream_options={"include_usage": True},
    messages=[{"role": "user", "content": "Stream please"}],
):
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage:
        usage = chunk.usage
assert text.endswith("Stream please"), text
assert usage and usage.total_tokens > 0, usage

assert any(m.id.startswith("groq/") for m in client.models.list())

try:
    for _ in client.chat.completions.create(
        model="groq/fault-cut", stream=True, messages=[{"role": "user", "content": "a b c d e f"}]
    ):
        pass
    sys.exit("a cut stream ended without an error")
except APIError as e:
    assert "mid-stream" in str(e), e

try:
    client.chat.completions.create(model="nope/x", messages=[{"role": "user", "content": "x"}])
    sys.exit("unknown model accepted")
except NotFoundError:
    pass

print("openai SDK check: ok")
