"""Incremental detokenization and stop strings across token boundaries (serve/detok.py), alone
and through the request bookkeeping that streams to clients."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from prefixtune.serve.detok import TextStream
from prefixtune.serve.request import Outputs, Request


class Pieces:
    """Token 7 is a newline, 8 a dot; 9 then 10 is 'é' (9 alone is U+FFFD); others ``w{i} ``;
    0 is EOS and decodes to nothing. Counts the tokens it decodes."""

    eos_token_id = pad_token_id = 0

    def __init__(self):
        self.decoded = 0

    def decode(self, ids, skip_special_tokens=True):
        self.decoded += len(ids)
        out, i = "", 0
        while i < len(ids):
            t = ids[i]
            if t == 9:
                joined = i + 1 < len(ids) and ids[i + 1] == 10
                out, i = out + ("é" if joined else "\ufffd"), i + (2 if joined else 1)
                continue
            out += {7: "\n", 8: ".", 0: ""}.get(t, f"w{t} ")
            i += 1
        return out


def streamed(tokens, stop, max_new_tokens=50):
    loop = asyncio.new_event_loop()
    try:
        req = Request("a", [1], max_new_tokens, stop=stop, ignore_eos=False, loop=loop, stream=asyncio.Queue(),
                      done=loop.create_future())
        outputs = Outputs(Pieces(), 0)
        outputs.advance(req, tokens)
        outputs.finish(req, "length")
        loop.run_until_complete(asyncio.sleep(0))
        chunks = []
        while not req.stream.empty():
            chunks.append(req.stream.get_nowait())
        return req, chunks
    finally:
        loop.close()


def test_a_stop_string_spanning_two_tokens_never_reaches_the_stream():
    """The defect: with stop "\\n\\n" the first newline was streamed before the second arrived."""
    req, chunks = streamed([5, 7, 7, 6], ["\n\n"])
    assert chunks == ["w5 ", None] and req.text == "w5 " and req.finish_reason == "stop"


def test_a_held_back_tail_is_released_when_it_is_not_a_stop_string():
    req, chunks = streamed([5, 7, 6, 7], ["\n\n"])
    assert chunks == ["w5 ", "\nw6 ", "\n", None] and req.text == "w5 \nw6 \n" and req.finish_reason == "length"


def test_stop_strings_inside_one_token_and_across_several():
    assert streamed([5, 8, 6], ["5 ."])[0].text == "w"
    assert streamed([5, 6, 8], ["w6 ."])[0].text == "w5 "
    req, chunks = streamed([5, 9, 10, 6], ["é"])
    assert req.text == "w5 " and "".join(c for c in chunks if c) == "w5 "


def test_decoding_is_linear_in_the_output():
    tok = Pieces()
    text = TextStream(tok)
    for t in [5, 6] * 500:
        text.push(t)
    assert text.final() == "w5 w6 " * 500
    assert tok.decoded <= 4 * 1000  # a whole-output decode per token would be ~500,000


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([5, 6, 7, 8, 9, 10]), max_size=30),
       st.lists(st.sampled_from(["\n", "\n\n", ".", "w6 .", "é", "5 w"]), max_size=3))
def test_streamed_text_is_the_whole_decode_cut_at_the_first_stop(tokens, stop):
    """The oracle: decode everything at once, then cut at the earliest stop string."""
    req, chunks = streamed(tokens, stop, max_new_tokens=len(tokens) + 1)
    whole = Pieces().decode(tokens)
    cuts = [whole.find(s) for s in stop if s in whole]
    want = whole[:min(cuts)] if cuts else whole
    assert req.text == want and "".join(c for c in chunks if c) == want and chunks[-1] is None
