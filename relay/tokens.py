"""Token estimates without a tokenizer: about four characters of English text per token.

No tokenizer or model file is downloaded at run time, so when a provider sends no `usage` the relay
counts characters. The same rule sizes the worst case it holds before dispatch. Estimates round up,
so a hold is never smaller than the rule's count.
"""

CHARS_PER_TOKEN = 4
# Each chat message costs a few tokens of framing (role, separators) on every provider we know.
TOKENS_PER_MESSAGE = 4


def tokens_estimate(text: str) -> int:
    """Estimated tokens in `text`: ceil(characters / 4)."""
    return -(-len(text) // CHARS_PER_TOKEN)


def _content_text(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": "…"}, …]
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def prompt_text(body: dict) -> tuple[str, int]:
    """The text of a request's input and the framing tokens its structure adds."""
    if isinstance(body.get("messages"), list):
        messages = [m for m in body["messages"] if isinstance(m, dict)]
        text = "".join(_content_text(m.get("content")) for m in messages)
        return text, TOKENS_PER_MESSAGE * len(messages)
    for key in ("prompt", "input"):
        value = body.get(key)
        if isinstance(value, str):
            return value, 0
        if isinstance(value, list):
            return "".join(item for item in value if isinstance(item, str)), 0
    return "", 0


def prompt_tokens_estimate(body: dict) -> int:
    text, framing = prompt_text(body)
    return tokens_estimate(text) + framing
