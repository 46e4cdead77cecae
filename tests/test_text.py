"""Word tokenizer (`mmib_cli.text`): exact offsets on hard unicode, Twitter-style splitting, word shapes."""
from __future__ import annotations

import pytest

from mmib_cli.text import NUM_WORD_SHAPES, Token, tokenize, word_shape


def words(text: str) -> list[str]:
    return [t.text for t in tokenize(text)]


def assert_exact(text: str, tokens: list[Token]) -> None:
    """Offsets index the text, tokens are in order, never overlap, and cover every non-space character."""
    covered = set()
    previous_end = 0
    for tok in tokens:
        assert tok.text == text[tok.start:tok.end] and tok.text
        assert tok.start >= previous_end
        assert not any(ch.isspace() for ch in tok.text)
        previous_end = tok.end
        covered.update(range(tok.start, tok.end))
    assert covered == {i for i, ch in enumerate(text) if not ch.isspace()}


HARD_TEXTS = [
    "Kawhi Leonard joins the Clippers in Los Angeles",
    "Emoji 🚀🔥 and family 👨\u200d👩\u200d👧 and skin 👍🏽 and flags 🇺🇸🇫🇷 keycap 1\ufe0f\u20e3",
    "RTL: مرحبا بالعالم and עִבְרִית with marks \u200fשלום\u200e done",
    "zero\u200bwidth space, soft\u00adhyphen, BOM \ufeffstart, joiner a\u200db",
    "combining cafe\u0301 and n\u0303 and Zalgo z\u0336\u0353a\u0337l\u0335g\u0334o",
    "Indic नमस्ते दुनिया and Thai สวัสดีครับ",
    "\u0301leading mark, tab\tnew\nline, nbsp\u00a0here, ideographic\u3000space",
    "astral 𝕏 𝒜 and CJK 北京欢迎你 and math 𝟙𝟚",
    "",
    "   ",
]


@pytest.mark.parametrize("text", HARD_TEXTS)
def test_offsets_exact_on_hard_unicode(text):
    assert_exact(text, tokenize(text))


def test_twitter_style_splitting():
    # Twitter-2017 CoNLL style: '@'/'#' split from the word, apostrophes and hyphens split, '_' kept, URLs whole.
    assert words("RT @warriors: Kawhi's #NBA") == ["RT", "@", "warriors", ":", "Kawhi", "'", "s", "#", "NBA"]
    assert words("Bundesliga_EN 2014-15") == ["Bundesliga_EN", "2014", "-", "15"]
    assert words("see http://t.co/Z3neVBQ7vF now") == ["see", "http://t.co/Z3neVBQ7vF", "now"]
    assert words("link https://example.com/a?b=1&c=2#frag") == ["link", "https://example.com/a?b=1&c=2#frag"]
    assert words("at www.nasa.gov/missions today") == ["at", "www.nasa.gov/missions", "today"]


def test_url_keeps_its_path_but_not_the_sentence_punctuation():
    assert words("read https://t.co/abc. Then (https://x.io/y) HTTPS://A.B/C!") == [
        "read", "https://t.co/abc", ".", "Then", "(", "https://x.io/y", ")", "HTTPS://A.B/C", "!"]


def test_marks_and_joiners_stay_attached():
    assert words("cafe\u0301 ok") == ["cafe\u0301", "ok"]
    assert words("नमस्ते दुनिया") == ["नमस्ते", "दुनिया"]  # virama / vowel signs inside one word
    assert words("👨\u200d👩\u200d👧 x") == ["👨\u200d👩\u200d👧", "x"]
    assert words("👍🏽👍") == ["👍🏽", "👍"]
    assert words("🇺🇸🇫🇷") == ["🇺🇸", "🇫🇷"]
    assert words("1\ufe0f\u20e3") == ["1\ufe0f\u20e3"]
    assert words("zero\u200bwidth") == ["zero\u200b", "width"]


def test_punctuation_and_emoji_are_single_tokens():
    assert words("wow!!! 🚀🔥...") == ["wow", "!", "!", "!", "🚀", "🔥", ".", ".", "."]


def test_every_char_of_long_noisy_text_is_covered():
    text = ("Obama 👋🏾 visits #Berlin @ Brandenburger_Tor! http://t.co/x1 مرحبا e\u0301\u200b " * 200)
    assert_exact(text, tokenize(text))


@pytest.mark.parametrize("word,shape", [
    ("kawhi", 1), ("NASA", 2), ("Kawhi", 3), ("I", 4), ("iPhone", 5), ("2017", 6), ("B2B", 6), ("!", 7),
    ("🚀", 7), ("Émile", 3), ("über", 1),
])
def test_word_shape_classes(word, shape):
    assert word_shape(word) == shape
    assert 1 <= word_shape(word) < NUM_WORD_SHAPES


def test_word_shape_matches_model_constant():
    from mmib_cli.model.configuration import NUM_WORD_SHAPES as MODEL_SHAPES

    assert NUM_WORD_SHAPES == MODEL_SHAPES
