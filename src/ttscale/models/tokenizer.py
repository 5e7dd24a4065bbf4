"""The embedded family's character-level tokenizer, built with the `tokenizers` library.

One token per printable ASCII character plus newline: arithmetic is digit-by-digit, and any
prompt of the built-in tasks round-trips exactly. Saved as `tokenizer.json` inside a
`PreTrainedTokenizerFast`, so `AutoTokenizer.from_pretrained` loads it offline.
"""
from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
SPECIALS = [PAD, BOS, EOS, UNK]
CHARS = ["\n"] + [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]

# Renders the last user message as a task prompt ("Q: ...\n"), so a chat message holding a
# problem of a built-in task is a valid prompt for the shipped models. A message that starts
# with "Think: " or "Auto: " keeps it: those ask for the long mode or leave it to the model (tasks/effort.py).
CHAT_TEMPLATE = (
    "{%- set ns = namespace(q='') -%}"
    "{%- for m in messages -%}{%- if m['role'] == 'user' -%}{%- set ns.q = m['content'] | trim -%}"
    "{%- endif -%}{%- endfor -%}"
    "{{- ns.q if ns.q.startswith('Q: ') or ns.q.startswith('Think: ') or ns.q.startswith('Auto: ') else 'Q: ' + ns.q -}}"
    "{{- '\n' -}}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character alone, newlines included ("." alone would keep "\n\n" as one <unk>).
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])])
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, unk_token=UNK)
    fast.chat_template = CHAT_TEMPLATE
    return fast
