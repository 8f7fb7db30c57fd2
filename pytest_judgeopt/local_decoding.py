"""Decoding on the embedded model: the replies of many calls at once, on one llama.cpp context.

Why together: on two cores llama.cpp evaluates a batch of fewer than 64 tokens at 5-6 ms a token and
one of 64 or more at about 3.4 (with flash attention, which the large batches need; measured on
SmolLM2-135M Q8_0 with 650 tokens held), and a separate judgment's own text (its criterion, the answer
format) is about 50 tokens. So the calls waiting for the model are decoded as one: each reply is a
sequence of the context's cache, the tokens their prompts share are evaluated once for all of them
(a token of a llama.cpp batch can belong to several sequences), and each step evaluates what every
unfinished reply needs in one batch. One sequence is kept after the calls, so the next calls start
from the longest prefix the last one left (the judge sends a sample's calls one after another).

How a reply is decoded, cheaply and always well-formed:

- **Structured output.** A ``response_format`` with a JSON schema is honoured with a llama.cpp
  grammar built from it. For the judge's schema (an object of enum or bounded-number properties)
  the reply's fixed text (braces, keys, separators) is evaluated with the prompt and only the values
  are sampled, under the grammar: a separate judgment is one sampled token. The reply is always
  valid JSON with in-scale values, and its length is the schema's, not ``max_tokens``. Any other
  schema is decoded whole under llama-cpp-python's grammar for it.
- **Log-probabilities** are computed only at the sampled positions, from those positions' logits:
  the chosen token's and the ``top_logprobs`` best alternatives, as the model gives them (before the
  grammar's mask), so the mass the model put outside the scale stays visible. Fixed text carries
  logprob 0 and no alternatives: the grammar admits nothing else there.
"""

from __future__ import annotations

import json
import math
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

CONTINUOUS_DECIMALS = 2  # a continuous score is decoded to at most this many decimals
NUMBER_CHARS = frozenset("0123456789.-")


@dataclass
class Decoded:
    """One reply: its text, and per token (chosen first) the top alternatives, for the logprobs asked for."""

    text: str = ""
    tokens: int = 0
    logprobs: list[list[tuple[str, float]]] = field(default_factory=list)
    finish_reason: str = "stop"


@dataclass(frozen=True)
class Request:
    """One call: its prompt's tokens and how its ``n`` replies are drawn."""

    prompt: tuple[int, ...]
    schema: dict[str, Any] | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top: int = 0  # top_logprobs, 0 for none
    seed: int | None = None
    n: int = 1

    @cached_property
    def template(self) -> Template | None:
        """The reply as fixed text and value slots, for the judge's schema; None for free text or another schema."""
        return Template.of(self.schema) if self.schema is not None else None

    def budget(self) -> int:
        """The most cache cells one reply can add after its prompt: the judge's schema's longest reply in
        characters (no token is shorter than one), else ``max_tokens``."""
        if self.schema is not None and self.template is not None:
            from .structured import longest_reply

            return len(longest_reply(self.schema))
        return self.max_tokens


# -- the judge's schema as fixed text and value slots -------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """A value of the reply: the texts an enum allows, or a bounded number (``texts`` empty)."""

    texts: tuple[str, ...]
    low: float = 0.0
    high: float = 0.0

    def rule(self) -> str:
        if self.texts:
            return " | ".join(json.dumps(t) for t in self.texts)
        return number_rule(self.low, self.high)

    def complete(self, written: str) -> bool:
        """No allowed value continues what is written: the fixed text after it follows for sure."""
        if not self.texts:
            return False
        return written in self.texts and not any(t != written and t.startswith(written) for t in self.texts)


@dataclass(frozen=True)
class Template:
    """The reply as ``json.dumps`` writes it: fixed texts around the value slots (fixed[i], slot[i], ..., fixed[-1])."""

    fixed: tuple[str, ...]
    slots: tuple[Slot, ...]

    @classmethod
    def of(cls, schema: dict[str, Any]) -> Template | None:
        """The judge's schema (an object of enum or bounded-number properties, all required), else None."""
        properties = schema.get("properties")
        if schema.get("type") != "object" or not isinstance(properties, dict) or not properties:
            return None
        if list(schema.get("required") or []) != list(properties):
            return None
        slots = []
        for sub in properties.values():
            if "enum" in sub and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sub["enum"]):
                slots.append(Slot(tuple(json.dumps(v) for v in sub["enum"])))
            elif sub.get("type") == "number" and "minimum" in sub and "maximum" in sub:
                slots.append(Slot((), float(sub["minimum"]), float(sub["maximum"])))
            else:
                return None
        keys = [json.dumps(name) for name in properties]
        fixed = ["{" + keys[0] + ": "] + [", " + key + ": " for key in keys[1:]] + ["}"]
        return cls(tuple(fixed), tuple(slots))

    def grammar(self) -> str:
        """The GBNF of the whole reply: the fixed texts exactly, each value by its rule."""
        parts = [json.dumps(self.fixed[0])]
        for i, text in enumerate(self.fixed[1:]):
            parts += [f"value{i}", json.dumps(text)]
        rules = [f"value{i} ::= {slot.rule()}" for i, slot in enumerate(self.slots)]
        return "\n".join([f"root ::= {' '.join(parts)}", *rules]) + "\n"


def number_rule(low: float, high: float) -> str:
    """A JSON number inside [low, high] with at most CONTINUOUS_DECIMALS decimals, for whole-number bounds
    at or above zero (the usual [0, 1] or [1, 10]); other bounds get any number of that many digits, and
    a value outside them fails the schema check after the reply."""
    decimals = " ".join(["[0-9]"] + ["[0-9]?"] * (CONTINUOUS_DECIMALS - 1))
    if low.is_integer() and high.is_integer() and 0 <= low < high:
        inner = " | ".join(json.dumps(str(v)) for v in range(int(low), int(high)))
        zeros = " ".join(['"0"'] + ['"0"?'] * (CONTINUOUS_DECIMALS - 1))
        return f'({inner}) ("." {decimals})? | {json.dumps(str(int(high)))} ("." {zeros})?'
    digits = len(str(int(max(abs(low), abs(high))))) or 1
    return f'"-"? [0-9]{{1,{digits}}} ("." {decimals})?'


_grammars: dict[str, Any] = {}


def grammar_for(text: str, json_schema: bool = False) -> Any:
    """A parsed llama.cpp grammar, kept per text (a run asks for a few schemas, thousands of times)."""
    if text not in _grammars:
        from llama_cpp.llama_grammar import LlamaGrammar

        _grammars[text] = (LlamaGrammar.from_json_schema(text, verbose=False) if json_schema
                           else LlamaGrammar.from_string(text, verbose=False))
    return _grammars[text]


# -- one reply on one sequence -------------------------------------------------------------------------------

# What a reply's steps yield when they need the next token, and are sent: the token and its alternatives.
Steps = Generator[None, tuple[int, list[tuple[str, float]]], None]


class Reply:
    """A reply being decoded on its own sequence of the cache: the tokens the sequence must hold (prompt, fixed
    text, sampled tokens), how many it holds, and the sampler that draws its next token under the grammar."""

    def __init__(self, engine: Engine, request: Request, seq: int, choice: int):
        import llama_cpp
        from llama_cpp._internals import LlamaSampler

        self.engine = engine
        self.request = request
        self.seq = seq
        self.tokens = list(request.prompt)
        self.held = 0  # of self.tokens, in the cache
        self.out = Decoded()
        self.bytes = b""
        self.output = -1  # the batch position whose logits draw the next token
        template = request.template
        if template is not None:
            grammar = grammar_for(template.grammar())
        elif request.schema is not None:
            grammar = grammar_for(json.dumps(request.schema, sort_keys=True), json_schema=True)
        else:
            grammar = None
        sampler = LlamaSampler()
        self.grammar = grammar is not None
        self.greedy = request.temperature <= 0.0
        if grammar is not None:
            sampler.add_grammar(engine.model, grammar)
        if self.greedy:
            sampler.add_greedy()
        else:
            seed = llama_cpp.LLAMA_DEFAULT_SEED if request.seed is None else request.seed + choice
            sampler.add_top_k(40)
            sampler.add_top_p(request.top_p, 1)
            sampler.add_min_p(0.05, 1)
            sampler.add_temp(request.temperature)
            sampler.add_dist(seed)
        self.sampler = sampler
        self.steps: Steps = self.template_steps(template) if template is not None else self.free_steps()
        self.done = False
        self.advance(None)

    def advance(self, drawn: tuple[int, list[tuple[str, float]]] | None) -> None:
        """Run the reply's steps up to the next token they need (or their end)."""
        try:
            if drawn is None:
                next(self.steps)
            else:
                self.steps.send(drawn)
        except StopIteration:
            self.done = True

    def close(self) -> None:
        self.sampler.close()

    def force(self, text: str) -> None:
        """Fixed text of the reply: evaluated with the next batch, accepted by the grammar, logprob 0."""
        for token in self.engine.model.tokenize(text.encode(), add_bos=False, special=False):
            self.sampler.accept(token)
            self.tokens.append(token)
            self.keep(token, [("", 0.0)])

    def draw(self) -> tuple[int, list[tuple[str, float]]]:
        """The next token under the grammar, from the logits at this reply's batch position; with logprobs, the
        chosen token's and the best alternatives' from the model's own distribution (before the grammar's mask).

        A greedy draw takes the most likely token when the grammar admits it, asking the grammar about that
        one token only: the same token the grammar's pass over the whole vocabulary would leave first, at a
        small part of its cost (the judge's values are mostly the model's first choice)."""
        import numpy as np

        engine = self.engine
        top = self.request.top
        logits = np.ctypeslib.as_array(engine.ctx.get_logits_ith(self.output), shape=(engine.vocab_size,))
        logprobs = None
        if top:
            shifted = logits - logits.max()
            logprobs = shifted - np.log(np.exp(shifted).sum())
        token = int(np.argmax(logits)) if self.greedy else -1
        if token >= 0 and (not self.grammar or self.admits(token)):
            self.sampler.accept(token)
        else:
            token = self.sampler.sample(engine.ctx, self.output)
        alternatives: list[tuple[str, float]] = [("", 0.0)]
        if logprobs is not None:
            best = np.argpartition(-logprobs, top)[:top]
            best = best[np.argsort(-logprobs[best])]
            alternatives = [("", float(logprobs[token]))] + [(engine.piece(int(t)), float(logprobs[t]))
                                                             for t in best if int(t) != token]
        return token, alternatives

    def admits(self, token: int) -> bool:
        """Whether the grammar (the sampler chain's first link) allows ``token`` next."""
        import ctypes

        import llama_cpp

        candidate = llama_cpp.llama_token_data(token, 0.0, 0.0)
        one = llama_cpp.llama_token_data_array(ctypes.pointer(candidate), 1, -1, False)
        llama_cpp.llama_sampler_apply(llama_cpp.llama_sampler_chain_get(self.sampler.sampler, 0), ctypes.byref(one))
        return bool(candidate.logit != -math.inf)

    def keep(self, token: int, alternatives: list[tuple[str, float]]) -> str:
        """Add a token to the reply (its text is filled in as the chosen entry); returns its text."""
        self.bytes += self.engine.model.detokenize([token])
        text = self.bytes.decode("utf-8", errors="ignore")
        piece = text[len(self.out.text):]
        self.out.text = text
        self.out.tokens += 1
        if self.request.top:
            self.out.logprobs.append([(piece, alternatives[0][1]), *alternatives[1:]])
        return piece

    def template_steps(self, template: Template) -> Steps:
        """The reply of the judge's schema: fixed texts forced, each value sampled under the grammar until it is whole."""
        self.force(template.fixed[0])
        for slot, after in zip(template.slots, template.fixed[1:], strict=True):
            written = ""  # what the value's sampled tokens wrote: the value, and maybe the start of `after`
            while not slot.complete(written):
                token, alternatives = yield
                self.tokens.append(token)
                piece = self.keep(token, alternatives)
                written += piece
                if not set(piece) <= NUMBER_CHARS:
                    break  # the token began the fixed text after the value
            self.force(after[len(written) - number_length(written):])

    def free_steps(self) -> Steps:
        """A free-text reply (or one under a whole-reply grammar), up to the end-of-turn token or max_tokens."""
        import llama_cpp

        vocab = self.engine.model.vocab
        for _ in range(self.request.max_tokens):
            if len(self.tokens) >= self.engine.positions:
                break
            token, alternatives = yield
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                return
            self.tokens.append(token)
            self.keep(token, alternatives)
        self.out.finish_reason = "length"


def number_length(text: str) -> int:
    n = 0
    while n < len(text) and text[n] in NUMBER_CHARS:
        n += 1
    return n


# -- many replies on one context -----------------------------------------------------------------------------


class Engine:
    """The model's one context, its sequences, and the tokens the kept sequence (0) holds between calls."""

    def __init__(self, model: Any, ctx: Any, positions: int, sequences: int, batch_tokens: int):
        from llama_cpp._internals import LlamaBatch

        self.model = model
        self.ctx = ctx
        self.positions = positions  # cache cells, shared by all sequences
        self.sequences = sequences
        self.batch_tokens = batch_tokens
        self.batch = LlamaBatch(n_tokens=batch_tokens, embd=0, n_seq_max=sequences)
        self.vocab_size = model.n_vocab()
        self.held: list[int] = []
        self.evaluated = 0  # tokens evaluated since the model was loaded

    def close(self) -> None:
        """Free the batch, then the context, then the model (the order ``Llama.close`` frees them in)."""
        self.batch.close()
        self.ctx.close()
        self.model.close()

    def piece(self, token: int) -> str:
        return self.model.detokenize([token]).decode("utf-8", errors="replace")

    def decode(self, requests: Sequence[Request]) -> list[list[Decoded]]:
        """Every request's replies (``n`` each), the requests decoded together as far as the cache allows."""
        out: list[list[Decoded]] = []
        for group in groups(requests, len(self.held), self.positions, self.sequences):
            out += self.decode_group([requests[i] for i in group])
        return out

    def decode_group(self, requests: Sequence[Request]) -> list[list[Decoded]]:
        ctx = self.ctx
        replies: list[Reply] = []
        try:
            for request in requests:
                for choice in range(request.n):
                    reply = Reply(self, request, len(replies), choice)
                    reply.held = min(common_length(self.held, reply.tokens), len(reply.tokens) - 1)
                    if reply.seq:  # share the kept sequence's cells (their sequence ids are copied, not the cells)
                        ctx.kv_cache_seq_rm(reply.seq, -1, -1)
                        ctx.kv_cache_seq_cp(0, reply.seq, 0, reply.held)
                    replies.append(reply)
            ctx.kv_cache_seq_rm(0, replies[0].held, -1)
            shared = True  # the first step evaluates the prompts: shared tokens once
            while active := [r for r in replies if not r.done]:
                self.step(active, shared)
                shared = False
        except BaseException:
            self.forget()
            raise
        finally:
            for reply in replies:
                reply.close()
        self.keep(replies[-1])
        return [[replies.pop(0).out for _ in range(request.n)] for request in requests]

    def step(self, replies: list[Reply], shared: bool) -> None:
        """Evaluate what each reply's sequence lacks, in batches, then draw each reply's next token from the
        logits at its last position. With ``shared``, a token that several replies' prompts hold at the same
        place after the same tokens is evaluated once, for all their sequences."""
        entries: list[tuple[int, int, list[int]]] = []  # (token, position, sequences)
        last: list[int] = []  # per reply, the entry of its last token
        root = min(r.held for r in replies) if shared else 0
        trie: dict[int, Any] = {}
        for reply in replies:
            if len(reply.tokens) > self.positions:
                raise ContextFull(len(reply.tokens), self.positions)
            if not shared:
                for position in range(reply.held, len(reply.tokens)):
                    entries.append((reply.tokens[position], position, [reply.seq]))
                last.append(len(entries) - 1)
                continue
            node, entry = trie, -1
            for position in range(root, len(reply.tokens)):  # the replies' tokens before `root` are the same
                token = reply.tokens[position]
                child = node.setdefault(token, [{}, -1])
                if position >= reply.held:
                    if child[1] < 0:
                        child[1] = len(entries)
                        entries.append((token, position, []))
                    entries[child[1]][2].append(reply.seq)
                node, entry = child[0], child[1]
            last.append(entry)
        outputs = set(last)
        size = -(-len(entries) // -(-len(entries) // self.batch_tokens))  # even batches: no short, slow last one
        for start in range(0, len(entries), size):  # a token's predecessors are in its batch or an earlier one
            chunk = entries[start:start + size]
            self.evaluate(chunk, [start + i in outputs for i in range(len(chunk))])
            for reply, entry in zip(replies, last, strict=True):
                if start <= entry < start + len(chunk):
                    reply.output = entry - start
                    drawn = reply.draw()
                    reply.held = len(reply.tokens)
                    reply.advance(drawn)

    def evaluate(self, chunk: list[tuple[int, int, list[int]]], logits: list[bool]) -> None:
        batch = self.batch.batch
        for i, (token, position, seqs) in enumerate(chunk):
            batch.token[i] = token
            batch.pos[i] = position
            batch.n_seq_id[i] = len(seqs)
            for j, seq in enumerate(seqs):
                batch.seq_id[i][j] = seq
            batch.logits[i] = logits[i]
        batch.n_tokens = len(chunk)
        self.ctx.decode(self.batch)
        self.evaluated += len(chunk)

    def keep(self, reply: Reply) -> None:
        """Keep one reply's sequence (the last: the next calls most likely continue it) as sequence 0; drop the rest."""
        ctx = self.ctx
        if reply.seq != 0:
            ctx.kv_cache_seq_rm(0, -1, -1)
            ctx.kv_cache_seq_cp(reply.seq, 0, -1, -1)
        for seq in range(1, self.sequences):
            ctx.kv_cache_seq_rm(seq, -1, -1)
        self.held = reply.tokens[:reply.held]

    def forget(self) -> None:
        """After a failed call: hold nothing, so no later call reuses cells the failure left half-written."""
        for seq in range(self.sequences):
            self.ctx.kv_cache_seq_rm(seq, -1, -1)
        self.held = []


class ContextFull(RuntimeError):
    def __init__(self, tokens: int, positions: int):
        super().__init__(f"the prompt and reply need {tokens} tokens; the embedded model holds {positions}: "
                         "shorten the inputs or the instruction, or set a hosted model with --judge-model")


def groups(requests: Sequence[Request], held: int, positions: int, sequences: int) -> Iterable[list[int]]:
    """The requests in order, as consecutive groups whose replies fit in the cache (``positions`` cells, ``held``
    taken) and the sequences; a request too big for the cache on its own is a group of its own."""
    group: list[int] = []
    trie: dict[int, Any] = {}
    cells = held
    replies = 0
    for i, request in enumerate(requests):
        need = unshared(trie, request.prompt, add=False) + request.n * request.budget()
        if group and (cells + need > positions or replies + request.n > sequences):
            yield group
            group, trie, cells, replies = [], {}, held, 0
            need = len(request.prompt) + request.n * request.budget()
        unshared(trie, request.prompt, add=True)
        group.append(i)
        cells += need
        replies += request.n
    if group:
        yield group


def unshared(trie: dict[int, Any], tokens: Sequence[int], add: bool) -> int:
    """How many of ``tokens`` are not on a path of the trie (nested dicts by token); with ``add``, put them there."""
    node: dict[int, Any] | None = trie
    new = 0
    for token in tokens:
        child = node.get(token) if node is not None else None
        if child is None:
            new += 1
            if add and node is not None:
                child = node[token] = {}
        node = child
    return new


def common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
