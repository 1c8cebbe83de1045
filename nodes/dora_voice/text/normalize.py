"""Speech-ready text: strip what must not be read aloud and spell out numbers, money, units and abbreviations.

The TTS node applies this to each LLM chunk (a speakable unit, never a raw token delta) before it segments and
synthesizes it. Piper phonemizes with espeak-ng, which already reads plain words well but mangles what an LLM
writes for a screen: ``"$29.95"`` becomes "dollar twenty-nine point nine five", ``"1980"`` "nineteen hundred
eighty", ``"3 ms"`` "M S", an emoji its Unicode name, ``"**"`` "asterisk asterisk", and ``"Mr. Smith"`` two
sentences with a pause between them. The rules below fix those cases and leave everything else alone.

Choices (see ``tests/test_normalize.py`` for every rule pinned down):
    * Code blocks (fenced with triple backticks or tildes) are replaced by the spoken marker
      :data:`CODE_BLOCK_PLACEHOLDER` ("Code block omitted."), once per block, so the listener knows something was
      skipped instead of hearing "Here is the function: This returns a list." A block may span several LLM
      chunks: :class:`SpeechNormalizer` keeps the "inside a code block" state between the chunks of a turn.
      Inline code (single backticks) is read: it is usually a name.
    * Links ``[text](url)`` are read as their text; bare URLs as their domain ("example.com", which espeak reads
      "example dot com").
    * Headings, bullets and numbered list items become plain sentences (a period is added where a line does not
      already end at a pause, :func:`~dora_voice.text.segmenter.ends_at_pause`, so each item gets its own pause);
      list numbers are dropped.
    * Emoji and other pictographs are removed.
    * Numbers use the ``inflect`` library (MIT; imported on first use, see :func:`warm_up`) for cardinals,
      ordinals and decimals; years (four digits, 1100-2099, no thousands separator) are read as years
      ("nineteen eighty", "two thousand five", "twenty twenty-five"), currency as "twenty-nine dollars and
      ninety-five cents".

Sources: espeak-ng's observed readings (``piper_phonemize``) of what LLMs write for a screen.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Callable

from dora_voice.text.segmenter import ends_at_pause

if TYPE_CHECKING:
    import inflect

CODE_BLOCK_PLACEHOLDER = "Code block omitted."
"""Spoken in place of a fenced code block (once per block)."""

CODE_FENCE = re.compile(r"```|~~~")
"""A markdown code fence (opening or closing a code block)."""


@functools.lru_cache(maxsize=1)
def _inflect() -> inflect.engine:
    # Imported on first use: inflect's import costs about 2 s of CPU here (typeguard instruments it), which a
    # ``--help`` or a config error should not pay. The TTS node calls :func:`warm_up` at start-up instead.
    import inflect

    return inflect.engine()


def warm_up() -> None:
    """Load the number-spelling library now (about 2 s on the 2-core machines) rather than inside the first turn."""
    normalize_for_speech("1")


# ------------------------------------------------------------------------------------------------------------
# Number words


def _int_words(digits: str) -> str:
    """Cardinal words for a non-negative integer given as digits ("1234" -> "one thousand two hundred and ...").

    Integers of 16 digits or more (card numbers, ids) are read digit by digit.
    """
    digits = digits.lstrip("0") or "0"
    if len(digits) >= 16:
        return _digits_words(digits)
    return str(_inflect().number_to_words(digits, comma="", andword="and"))


def _digits_words(digits: str) -> str:
    """One word per digit: "0071" -> "zero zero seven one"."""
    return " ".join(_inflect().number_to_words(d) for d in digits)


def _decimal_words(whole: str, frac: str) -> str:
    """ "3", "14" -> "three point one four"."""
    return f"{_int_words(whole)} point {_digits_words(frac)}"


def _number_words(text: str) -> str:
    """Words for "1,234", "3.14", "0.5" or "42" (no sign)."""
    text = text.replace(",", "")
    whole, _, frac = text.partition(".")
    return _decimal_words(whole or "0", frac) if frac else _int_words(whole)


def year_words(year: int) -> str:
    """Read a year the way people say it.

    Args:
        year: 1000-2999 (others are read as cardinals).

    Returns:
        1980 -> "nineteen eighty", 1905 -> "nineteen oh five", 1900 -> "nineteen hundred",
        2000 -> "two thousand", 2005 -> "two thousand five", 2025 -> "twenty twenty-five".
    """
    if not 1000 <= year <= 2999:
        return _int_words(str(year))
    high, low = divmod(year, 100)
    if 2000 <= year <= 2009 or year % 1000 == 0:
        return str(_inflect().number_to_words(year, comma="", andword=""))
    if low == 0:
        return f"{_int_words(str(high))} hundred"
    if low < 10:
        return f"{_int_words(str(high))} oh {_int_words(str(low))}"
    return f"{_int_words(str(high))} {_int_words(str(low))}"


def _ordinal_words(digits: str) -> str:
    return str(_inflect().ordinal(_int_words(digits)))


def _is_one(number: str) -> bool:
    return number.replace(",", "") in ("1", "01")


# ------------------------------------------------------------------------------------------------------------
# Markdown and symbols

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^\s*(?:[-*+\u2022]|\d{1,3}[.)])\s+(?=\S)")
_QUOTE = re.compile(r"^\s*>+\s?")
_RULE = re.compile(r"^\s*([-*_])(?:\s*\1){2,}\s*$")
_TABLE_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")

_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)\s]*(?:\s+\"[^\"]*\")?\)")
_LINK = re.compile(r"\[([^\]]+)\]\((?:[^()\s]|\([^()\s]*\))+(?:\s+\"[^\"]*\")?\)")
_AUTOLINK = re.compile(r"<((?:https?://|www\.)[^>\s]+)>")
_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>()\[\]]*[^\s<>()\[\].,;:!?'\"]")
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_ITALIC_STAR = re.compile(r"(?<![\w*])\*(?=[^\s*])([^*\n]+?)(?<=[^\s*])\*(?![\w*])")
_ITALIC_UNDERSCORE = re.compile(r"(?<![\w_])_(?=[^\s_])([^_\n]+?)(?<=[^\s_])_(?![\w_])")

_EMOJI = re.compile(
    "["
    "\U0001f000-\U0001faff"  # mahjong .. symbols and pictographs extended-A (emoji proper)
    "\U00002600-\U000027bf"  # miscellaneous symbols, dingbats
    "\U00002b00-\U00002bff"  # arrows and stars used as emoji
    "\U00002300-\U000023ff"  # miscellaneous technical (watch, hourglass, ...)
    "\U0001f1e6-\U0001f1ff"  # regional indicators (flags)
    "\U0000fe00-\U0000fe0f"  # variation selectors
    "\U0000200d\U000020e3"  # zero-width joiner, combining keycap
    "\U000e0020-\U000e007f"  # tag characters (subdivision flags)
    "\U0000200b\U0000200c\U00002060\U0000feff"  # zero-width space/non-joiner, word joiner, BOM
    "]+"
)


def _markdown_lines(text: str) -> str:
    """Line-level markdown: headings, bullets, quotes, rules, tables -> plain sentences joined by spaces."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    out: list[str] = []
    for raw in lines:
        line = raw
        if _RULE.match(line) or (_TABLE_SEPARATOR.match(line) and "|" in line):
            continue
        heading = _HEADING.match(line)
        if heading:
            line = heading.group(1)
        line = _QUOTE.sub("", line)
        line = _BULLET.sub("", line)
        stripped = line.strip()
        if stripped.startswith("|") and stripped.endswith("|") and stripped.count("|") >= 2:
            cells = [cell.strip() for cell in stripped.strip("|").split("|")]
            line = ", ".join(cell for cell in cells if cell)
        line = line.strip()
        if line:
            out.append(line)
    if len(out) <= 1:
        return out[0] if out else ""
    # Every line but the last becomes its own sentence (LLMs do not hard-wrap paragraphs).
    return " ".join(line if ends_at_pause(line) else line + "." for line in out[:-1]) + " " + out[-1]


def _domain(url: str) -> str:
    host = re.sub(r"^(?:https?://)?", "", url).split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    host = host.split("@")[-1].split(":", 1)[0]
    return host[4:] if host.lower().startswith("www.") else host


def _inline_markdown(text: str) -> str:
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _AUTOLINK.sub(r"\1", text)
    text = _URL.sub(lambda m: _domain(m.group(0)), text)
    text = _INLINE_CODE.sub(r"\1", text)
    for _ in range(2):  # nested emphasis: ***x*** or **_x_**
        text = _BOLD.sub(r"\2", text)
        text = _STRIKE.sub(r"\1", text)
        text = _ITALIC_STAR.sub(r"\1", text)
        text = _ITALIC_UNDERSCORE.sub(r"\1", text)
    return text


_SYMBOLS: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    (re.compile(r"\s*(?:->|=>|\u2192|\u27f6)\s*"), " to "),
    (re.compile(r"\s+[\u2014\u2013]\s+|\u2014"), ", "),  # em dash or spaced en dash: a pause
    (re.compile(r"\b([CF])#(?!\w)"), r"\1 sharp"),
    (re.compile(r"#(?=\d)"), "number "),
    (re.compile(r"(?<![\w~])~(?=\s?\d)\s?"), "about "),
    (re.compile(r"(?<=\d)\s*[*\u00d7]\s*(?=\d)"), " times "),
    (re.compile(r"(?<=\d)x\b"), " times"),
    (re.compile(r"(?<=\d)\s*\^\s*(?=\d)"), " to the power of "),
    (re.compile(r"\u00b1"), " plus or minus "),
    (re.compile(r"\s&\s"), " and "),
]

_LEFTOVER_MARKUP = re.compile(r"[*`#|~^]|(?<!\w)_+|_+(?!\w)")


# ------------------------------------------------------------------------------------------------------------
# Abbreviations

_TITLES = {"Mr": "Mister", "Mrs": "Missus", "Ms": "Miz", "Prof": "Professor", "Sgt": "Sergeant", "Capt": "Captain",
           "Gov": "Governor", "Sen": "Senator", "Rep": "Representative", "Gen": "General", "Lt": "Lieutenant"}
_TRAILING = {"Jr": "Junior", "Sr": "Senior", "Inc": "Incorporated", "Ltd": "Limited", "Corp": "Corporation",
             "etc": "et cetera", "approx": "approximately", "Fig": "Figure", "fig": "figure", "Vol": "Volume",
             "vol": "volume", "Dept": "Department", "est": "estimated", "min": "minutes", "max": "maximum",
             "Jan": "January", "Feb": "February", "Mar": "March", "Apr": "April", "Aug": "August",
             "Sept": "September", "Sep": "September", "Oct": "October", "Nov": "November", "Dec": "December"}

_TITLE_RE = re.compile(r"\b(" + "|".join(_TITLES) + r")\.(?=\s+\S)")
_TRAILING_RE = re.compile(r"\b(" + "|".join(sorted(_TRAILING, key=len, reverse=True)) + r")\.(?=(\s+(\S))?)")
_EG_RE = re.compile(r"\b(e\.\s?g|i\.\s?e)\.(?:,)?(?=\s)|\b(e\.\s?g|i\.\s?e)\.(?:,)?$", re.IGNORECASE)
_VS_RE = re.compile(r"\bvs\.?(?=\s)", re.IGNORECASE)
_DR_ST_RE = re.compile(r"\b(Dr|St)\.(?=(\s+(\S))?)")
_NUMBER_ABBR_RE = re.compile(r"\b[Nn]o\.\s?(?=\d)")
_AM_PM_RE = re.compile(r"(?<=\d)\s?([ap])\.?\s?m\.(?=(\s+(\S))?)|(?<=\d)\s?([AaPp])\.?[Mm]\b")
_INITIALISM_RE = re.compile(r"(?<![\w.])((?:[A-Za-z]\.){2,})(?=(\s+(\S))?)")


def _keep_period(match: re.Match[str], following_group: int, *, before_capital: bool = True) -> str:
    """The period after an expanded abbreviation stays only where a sentence plausibly ends there.

    It stays at the end of the text, and (with ``before_capital``) before a capitalised word ("etc. Then").
    Initialisms pass ``before_capital=False``: "U.S. Army" is more often a name than a sentence end.
    """
    if match.string[match.end():].strip() == "":
        return "."
    nxt = match.group(following_group)
    return "." if before_capital and nxt is not None and nxt[:1].isupper() else ""


def _abbreviations(text: str) -> str:
    text = _EG_RE.sub(lambda m: "for example," if (m.group(1) or m.group(2))[0] in "eE" else "that is,", text)
    text = _VS_RE.sub("versus", text)
    text = _NUMBER_ABBR_RE.sub("number ", text)
    text = _TITLE_RE.sub(lambda m: _TITLES[m.group(1)], text)

    def am_pm(m: re.Match[str]) -> str:
        letter = (m.group(1) or m.group(4)).upper()
        tail = _keep_period(m, 3) if m.group(1) else ""
        return f" {letter}M{tail}"

    text = _AM_PM_RE.sub(am_pm, text)

    def dr_st(m: re.Match[str]) -> str:
        nxt = m.group(3)
        after_name = m.start() > 0 and bool(re.search(r"[A-Z][a-z]+\s$", text[:m.start()]))
        if nxt is not None and nxt[:1].isupper():  # "St. Louis", "Dr. Who" (also "Visit St. Louis")
            return "Doctor" if m.group(1) == "Dr" else "Saint"
        if after_name:
            return ("Drive" if m.group(1) == "Dr" else "Street") + _keep_period(m, 3)
        return ("Doctor" if m.group(1) == "Dr" else "Saint") + _keep_period(m, 3)

    text = _DR_ST_RE.sub(dr_st, text)
    text = _TRAILING_RE.sub(lambda m: _TRAILING[m.group(1)] + _keep_period(m, 3), text)
    text = _INITIALISM_RE.sub(lambda m: m.group(1).replace(".", "").upper() + _keep_period(m, 3, before_capital=False), text)
    return text


# ------------------------------------------------------------------------------------------------------------
# Numbers, money, units

_NUM = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?"
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December"]
_CURRENCIES = {"$": ("dollar", "dollars", "cent", "cents"), "\u20ac": ("euro", "euros", "cent", "cents"),
               "\u00a3": ("pound", "pounds", "penny", "pence"), "\u00a5": ("yen", "yen", "", "")}
_MAGNITUDES = {"k": "thousand", "K": "thousand", "thousand": "thousand", "m": "million", "M": "million",
               "mn": "million", "million": "million", "b": "billion", "B": "billion", "bn": "billion",
               "billion": "billion", "t": "trillion", "T": "trillion", "tn": "trillion", "trillion": "trillion"}

# unit -> (singular, plural). Case-sensitive keys; longest first in the regex.
_UNITS = {
    "km": ("kilometer", "kilometers"), "m": ("meter", "meters"), "cm": ("centimeter", "centimeters"),
    "mm": ("millimeter", "millimeters"), "\u00b5m": ("micrometer", "micrometers"), "nm": ("nanometer", "nanometers"),
    "mi": ("mile", "miles"), "ft": ("foot", "feet"), "yd": ("yard", "yards"),
    "kg": ("kilogram", "kilograms"), "g": ("gram", "grams"), "mg": ("milligram", "milligrams"),
    "lb": ("pound", "pounds"), "lbs": ("pound", "pounds"), "oz": ("ounce", "ounces"),
    "ms": ("millisecond", "milliseconds"), "\u00b5s": ("microsecond", "microseconds"), "us": ("microsecond", "microseconds"),
    "ns": ("nanosecond", "nanoseconds"), "s": ("second", "seconds"), "sec": ("second", "seconds"),
    "secs": ("second", "seconds"), "min": ("minute", "minutes"), "mins": ("minute", "minutes"),
    "h": ("hour", "hours"), "hr": ("hour", "hours"), "hrs": ("hour", "hours"),
    "Hz": ("hertz", "hertz"), "kHz": ("kilohertz", "kilohertz"), "MHz": ("megahertz", "megahertz"),
    "GHz": ("gigahertz", "gigahertz"),
    "B": ("byte", "bytes"), "KB": ("kilobyte", "kilobytes"), "kB": ("kilobyte", "kilobytes"),
    "MB": ("megabyte", "megabytes"), "GB": ("gigabyte", "gigabytes"), "TB": ("terabyte", "terabytes"),
    "KiB": ("kibibyte", "kibibytes"), "MiB": ("mebibyte", "mebibytes"), "GiB": ("gibibyte", "gibibytes"),
    "Mbps": ("megabit per second", "megabits per second"), "Gbps": ("gigabit per second", "gigabits per second"),
    "W": ("watt", "watts"), "kW": ("kilowatt", "kilowatts"), "kWh": ("kilowatt hour", "kilowatt hours"),
    "V": ("volt", "volts"), "mAh": ("milliamp hour", "milliamp hours"),
    "L": ("liter", "liters"), "l": ("liter", "liters"), "ml": ("milliliter", "milliliters"), "mL": ("milliliter", "milliliters"),
    "mph": ("mile per hour", "miles per hour"), "km/h": ("kilometer per hour", "kilometers per hour"),
    "kph": ("kilometer per hour", "kilometers per hour"), "m/s": ("meter per second", "meters per second"),
    "\u00b0C": ("degree Celsius", "degrees Celsius"), "\u00b0F": ("degree Fahrenheit", "degrees Fahrenheit"),
    "\u00b0": ("degree", "degrees"), "kcal": ("kilocalorie", "kilocalories"),
}
_UNIT_RE = re.compile(
    r"(?<![\w.,])(-?)(" + _NUM + r")\s?(" + "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))
    + r")(?![\w/])"
)
_ISO_DATE_RE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_TIME_RE = re.compile(r"(?<![\d:.])([01]?\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?(?![\d:])")
_CURRENCY_RE = re.compile(
    r"(-?)([$\u20ac\u00a3\u00a5])\s?(" + _NUM + r")(?:\s?(thousand|million|billion|trillion|mn|bn|tn|[kKmMbBtT])\b)?"
)
_PERCENT_RE = re.compile(r"(?<![\w.])(-?)(" + _NUM + r")\s?%")
_PHONE_RE = re.compile(r"(?<![\w-])(?:\((\d{3})\)\s?|(\d{3})[-.\s])(\d{3})[-.](\d{4})(?![\w-])")
_RANGE_RE = re.compile(r"(?<![\w.,-])(\d+(?:\.\d+)?)\s?(?:-|\u2013)\s?(\d+(?:\.\d+)?)(?![\w.,-]?\d)")
_ORDINAL_RE = re.compile(r"\b(\d+)(?:st|nd|rd|th)\b", re.IGNORECASE)
_DECADE_RE = re.compile(r"(?<![\w'])(1\d|20)?(\d)0['\u2019]?s\b|(?<!\w)['\u2019](\d)0s\b")
_VERSION_RE = re.compile(r"(?<![\w.])[vV]?(\d+(?:\.\d+){2,})(?![\w.]?\d)")
_FRACTION_RE = re.compile(r"(?<![\w/.])([1-9])/([234])(?![\w/]|\.\d)")
_NEGATIVE_RE = re.compile(r"(?<![\w.,)\]])-(?=\d)")
_PLAIN_NUMBER_RE = re.compile(r"(?<![\w.])(" + _NUM + r")(?![\w]|\.\d)")
_TENS_PLURAL = {"ten": "tens", "twenty": "twenties", "thirty": "thirties", "forty": "forties", "fifty": "fifties",
                "sixty": "sixties", "seventy": "seventies", "eighty": "eighties", "ninety": "nineties",
                "hundred": "hundreds", "thousand": "thousands"}


def _currency(m: re.Match[str]) -> str:
    sign, symbol, amount, magnitude = m.group(1), m.group(2), m.group(3), m.group(4)
    one, many, sub_one, sub_many = _CURRENCIES[symbol]
    prefix = "minus " if sign else ""
    if magnitude:
        return f"{prefix}{_number_words(amount)} {_MAGNITUDES[magnitude]} {many}"
    whole, _, frac = amount.replace(",", "").partition(".")
    if frac and (len(frac) != 2 or not sub_one):
        return f"{prefix}{_number_words(amount)} {many}"
    cents = int(frac) if frac else 0
    whole_int = int(whole or "0")
    parts = []
    if whole_int or not cents:
        parts.append(f"{_int_words(whole or '0')} {one if whole_int == 1 else many}")
    if cents:
        parts.append(f"{_int_words(str(cents))} {sub_one if cents == 1 else sub_many}")
    return prefix + " and ".join(parts)


def _unit(m: re.Match[str]) -> str:
    sign, number, unit = m.group(1), m.group(2), m.group(3)
    one, many = _UNITS[unit]
    return f"{'minus ' if sign else ''}{_number_words(number)} {one if _is_one(number) else many}"


def _time(m: re.Match[str]) -> str:
    hour, minute, second = int(m.group(1)), int(m.group(2)), m.group(3)
    words = _int_words(str(hour))
    if minute == 0 and not second:
        followed_by_am_pm = m.string[m.end():m.end() + 6].lstrip().upper().replace(".", "").startswith(("AM", "PM"))
        return words if followed_by_am_pm else f"{words} o'clock"
    words += f" oh {_int_words(str(minute))}" if minute < 10 else f" {_int_words(str(minute))}"
    if second:
        words += f" and {_int_words(second)} seconds"
    return words


def _iso_date(m: re.Match[str]) -> str:
    year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return m.group(0)
    return f"{_MONTHS[month - 1]} {_ordinal_words(str(day))}, {year_words(year)}"


def _decade(m: re.Match[str]) -> str:
    if m.group(3) is not None:
        return _TENS_PLURAL[_int_words(m.group(3) + "0")]
    century, tens = m.group(1), m.group(2)
    if century is None:
        return m.group(0)
    if tens == "0":
        return year_words(int(century + "00")) + "s"  # "nineteen hundreds", "two thousands"
    spoken = year_words(int(century + tens + "0")).split(" ")
    spoken[-1] = _TENS_PLURAL.get(spoken[-1], spoken[-1] + "s")
    return " ".join(spoken)


def _fraction(m: re.Match[str]) -> str:
    num, den = int(m.group(1)), int(m.group(2))
    if num >= den:
        return m.group(0)
    names = {2: ("half", "halves"), 3: ("third", "thirds"), 4: ("quarter", "quarters")}
    one, many = names[den]
    return f"{_int_words(str(num))} {one if num == 1 else many}"


def _plain_number(m: re.Match[str]) -> str:
    number = m.group(1)
    if "," not in number and "." not in number and len(number) == 4 and 1100 <= int(number) <= 2099:
        return year_words(int(number))
    if "," not in number and "." not in number and len(number) > 1 and number.startswith("0"):
        return _digits_words(number)  # "007", zip-code-like: digit by digit
    return _number_words(number)


def _phone(m: re.Match[str]) -> str:
    groups = [g for g in m.groups() if g]
    return ", ".join(_digits_words(g) for g in groups)


def _numbers(text: str) -> str:
    text = _ISO_DATE_RE.sub(_iso_date, text)
    text = _PHONE_RE.sub(_phone, text)
    text = _TIME_RE.sub(_time, text)
    text = _RANGE_RE.sub(lambda m: f"{m.group(1)} to {m.group(2)}", text)
    text = _CURRENCY_RE.sub(_currency, text)
    text = _PERCENT_RE.sub(lambda m: f"{'minus ' if m.group(1) else ''}{_number_words(m.group(2))} percent", text)
    text = _VERSION_RE.sub(lambda m: " point ".join(_int_words(p) for p in m.group(1).split(".")), text)
    text = _DECADE_RE.sub(_decade, text)
    text = _UNIT_RE.sub(_unit, text)
    text = _NEGATIVE_RE.sub("minus ", text)
    text = _ORDINAL_RE.sub(lambda m: _ordinal_words(m.group(1)), text)
    text = _FRACTION_RE.sub(_fraction, text)
    text = _PLAIN_NUMBER_RE.sub(_plain_number, text)
    return text


# ------------------------------------------------------------------------------------------------------------
# Public API

_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_DOUBLE_PUNCT = re.compile(r"([,;:])\s*([,.;:!?])")
_MULTISPACE = re.compile(r"[ \t\u00a0]+")
_SPEAKABLE = re.compile(r"[^\W_]")


def _inline(text: str) -> str:
    """Everything after code blocks are gone: markdown, emoji, symbols, abbreviations, numbers, cleanup."""
    text = _markdown_lines(text)
    text = _inline_markdown(text)
    text = _EMOJI.sub(" ", text)
    for pattern, replacement in _SYMBOLS:
        text = pattern.sub(replacement, text)
    text = _abbreviations(text)
    text = _numbers(text)
    text = _LEFTOVER_MARKUP.sub(" ", text)
    text = _MULTISPACE.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _DOUBLE_PUNCT.sub(lambda m: m.group(2) if m.group(2) in ".!?" else m.group(1), text)
    text = re.sub(r"\(\s*\)", "", text).strip()
    text = re.sub(r"^[,.;:]\s*", "", text)
    return text if _SPEAKABLE.search(text) else ""


class SpeechNormalizer:
    """Stateful normalizer for the chunks of one reply: remembers whether a code block is still open.

    Use one per turn: ``normalize(chunk)`` for each LLM chunk in order, :meth:`reset` at a new turn.
    """

    def __init__(self) -> None:
        self.in_code_block = False

    def reset(self) -> None:
        """Forget any open code block (a new turn starts)."""
        self.in_code_block = False

    def normalize(self, text: str) -> str:
        """Speech-ready text for one chunk.

        Args:
            text: a chunk of the reply as the LLM wrote it (markdown, digits, symbols, emoji).

        Returns:
            Plain text for the synthesizer, whitespace collapsed, no newlines; ``""`` when nothing in the
            chunk should be spoken (only emoji, punctuation, or code).
        """
        pieces: list[str] = []
        pos = 0
        for fence in CODE_FENCE.finditer(text):
            if not self.in_code_block:
                pieces.append(text[pos:fence.start()])
                pieces.append(f"\n{CODE_BLOCK_PLACEHOLDER}\n")
            self.in_code_block = not self.in_code_block
            pos = fence.end()
        if not self.in_code_block:
            pieces.append(text[pos:])
        return _inline("".join(pieces))


def normalize_for_speech(text: str) -> str:
    """Speech-ready text for one self-contained piece of text (a segment, a whole reply).

    A code fence opened and not closed in ``text`` drops everything after it. For a reply arriving in chunks,
    use :class:`SpeechNormalizer`, which carries an open code block over to the next chunk.

    Args:
        text: text as an LLM writes it.

    Returns:
        Text to synthesize: markdown removed, emoji removed, numbers, currency, percentages, times, dates, units
        and common abbreviations spelled out; ``""`` when nothing is left to say.

    Example:
        >>> normalize_for_speech("**Total:** $29.95 (e.g. 45% off)")
        'Total: twenty-nine dollars and ninety-five cents (for example, forty-five percent off)'
    """
    return SpeechNormalizer().normalize(text)
