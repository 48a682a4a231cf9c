"""A CLIP tokenizer whose vocabulary holds each word of a closed list as one token."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from transformers import CLIPTokenizer

START, END = "<|startoftext|>", "<|endoftext|>"
WORD_END = "</w>"


def byte_characters() -> list[str]:
    """The 256 characters CLIP's byte-level BPE writes for the bytes 0..255 (GPT-2's ``bytes_to_unicode``)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [byte for byte in range(256) if byte not in printable]
    codes = dict(zip(printable, printable, strict=True)) | {byte: 256 + n for n, byte in enumerate(others)}
    return [chr(codes[byte]) for byte in range(256)]


def word_merges(words: list[str]) -> list[tuple[str, str]]:
    """BPE merges that join each word's characters left to right into ``word</w>``.

    Longer words come first, so that the merges of a word that another one contains (``man`` in ``woman``) rank
    after the longer word's own and never split it.
    """
    merges: list[tuple[str, str]] = []
    for word in sorted(set(words), key=lambda word: (-len(word), word)):
        symbols = [*word[:-1], word[-1] + WORD_END]
        joined = symbols[0]
        for symbol in symbols[1:]:
            if (joined, symbol) not in merges:
                merges.append((joined, symbol))
            joined += symbol
    return merges


def write_tokenizer(folder: Path, words: list[str], max_length: int) -> Path:
    """Writes a ``CLIPTokenizer`` folder (``vocab.json``, ``merges.txt``, its config) holding each of ``words``.

    The vocabulary is CLIP's layout: the byte characters, each again with ``</w>``, the merged words, then the start
    and end tokens (the end token also pads and stands for unknown symbols). A word outside ``words`` falls back to
    shorter pieces, down to single characters.

    Args:
        folder: where to write (created).
        words: lower-case words without spaces, each to become one token.
        max_length: ``model_max_length``: prompts are padded or truncated to this many tokens.

    Raises:
        ValueError: naming a word with an upper-case letter or a space (CLIP lower-cases and splits text first).
    """
    for word in words:
        if not word or word != word.lower() or any(character.isspace() for character in word):
            raise ValueError(f"Vocabulary word {word!r} must be non-empty, lower-case and without spaces")
    characters = byte_characters()
    merges = word_merges(words)
    tokens = [*characters, *(character + WORD_END for character in characters)]
    tokens += list(dict.fromkeys(left + right for left, right in merges if left + right not in tokens))
    tokens += [START, END]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(tokens)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in merges))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": max_length,
        "bos_token": START,
        "eos_token": END,
        "pad_token": END,
        "unk_token": END,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


def build_tokenizer(words: list[str], max_length: int) -> CLIPTokenizer:
    """The ``CLIPTokenizer`` of :func:`write_tokenizer`, checked to give each of ``words`` one token.

    Raises:
        ValueError: naming a word that does not come out as one token.
    """
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(Path(folder), words, max_length))
    for word in words:
        pieces = tokenizer.tokenize(word)
        if pieces != [word + WORD_END]:
            raise ValueError(f"Vocabulary word {word!r} is tokenized as {pieces}, not as one token")
    return tokenizer
