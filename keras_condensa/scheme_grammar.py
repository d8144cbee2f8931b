"""The `--scheme` grammar of the command line: text to a `kc` operator.

A scheme is one or more terms joined by `+`; each term is a word followed by
its arguments, separated by `:`, e.g. `prune:0.1+int8` or `filter:0.5+nm:2:4`.

The words are not listed here: every operator class declares its own,

```python
class Prune(PruningOperator):
    scheme_word = "prune"          # or a tuple of words, each passed as the first argument
    scheme_args = ("D",)           # argument kinds, in order (see ARGUMENTS)
    scheme_help = "unstructured magnitude pruning: keep fraction D of the weights"
```

An operator whose arguments come in another order than its constructor's
declares their keywords too (`scheme_names = ("cost", "budget")`).

and the grammar, `--help` and `markdown_table()` (the docs) are built from
those declarations. A user's `kc.Operator` subclass that declares them joins
the grammar once its module is imported.
"""

from keras_condensa.operators import (
    BlockDiagonalPrune,
    BlockPrune,
    ChannelGates,
    Cluster,
    Compose,
    EntropyCoded,
    FilterPrune,
    HSPGPrune,
    MultiHash,
    NeuronPrune,
    NMPrune,
    Operator,
    Prune,
    Quantize,
    SoftThresholdPrune,
    StructurePrune,
    Unify,
)

# The built-in operators, in the order the help lists them.
_BUILT_IN = (
    Prune,
    NeuronPrune,
    FilterPrune,
    StructurePrune,
    BlockPrune,
    NMPrune,
    BlockDiagonalPrune,
    SoftThresholdPrune,
    ChannelGates,
    HSPGPrune,
    Cluster,
    Unify,
    EntropyCoded,
    MultiHash,
    Quantize,
)


class SchemeSyntaxError(ValueError):
    """A `--scheme` string that does not follow the grammar."""


def _number(kind, what):
    def parse(text, term):
        try:
            return kind(text)
        except ValueError:
            article = "an integer" if kind is int else "a number"
            raise SchemeSyntaxError(
                f"scheme term {term!r}: {what} must be {article}. Received: {text!r}."
            ) from None

    return parse


def _block(text, term):
    size = text.lower().split("x")
    if len(size) != 2:
        raise SchemeSyntaxError(
            f"scheme term {term!r}: the block size must be RxC, e.g. 4x4. Received: {text!r}."
        )
    return tuple(_number(int, "the block size")(s, term) for s in size)


def _cost(text, term):
    return text.lower()


#: Argument kinds an operator may declare in `scheme_args`: (parser, meaning).
ARGUMENTS = {
    "D": (_number(float, "the density"), "density in (0, 1], the fraction of weights kept"),
    "N": (_number(int, "N"), "nonzeros kept in every group of M weights"),
    "M": (_number(int, "M"), "the group size"),
    "RxC": (_block, "block rows x columns"),
    "COST": (_cost, "the cost a budget counts: flops, params or latency"),
    "B": (_number(float, "the budget"), "budget in (0, 1], the fraction of the dense cost"),
    "K": (_number(int, "the cluster count"), "number of shared values of each weight"),
    "RATE": (_number(float, "the rate weight"), "loss added per kilobyte of coded weights"),
    "R": (_number(float, "the ratio"), "trainable variables per covered weight, in (0, 1)"),
    "BLOCKS": (_number(int, "the block count"), "diagonal blocks of each weight matrix, >= 2"),
}


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def operators():
    """The operator classes that declare a scheme word: built-ins first, then others by word.

    Returns:
        A list of classes.
    """
    others = {
        cls for cls in _subclasses(Operator) if "scheme_word" in vars(cls) and cls not in _BUILT_IN
    }
    return list(_BUILT_IN) + sorted(others, key=lambda c: str(c.scheme_word))


def _words(cls):
    word = cls.scheme_word
    return (word,) if isinstance(word, str) else tuple(word)


def terms():
    """Every term as the help shows it (`prune:D`, `block:D:RxC`, `int8`, ...), in order."""
    out = []
    for cls in operators():
        for word in _words(cls):
            out.append(":".join((word, *cls.scheme_args)))
    return out


def _term_label(cls):
    """`prune:D`, or `float16, int8, int4` for an operator with several words."""
    words = _words(cls)
    if len(words) > 1:
        return ", ".join(words)
    return ":".join((words[0], *cls.scheme_args))


def table_lines():
    """The grammar as aligned lines for `--help`: one per operator, then the joining rule."""
    rows = [(_term_label(cls), cls.scheme_help) for cls in operators()]
    width = max(len(label) for label, _ in rows) + 3
    return [label.ljust(width) + text for label, text in rows] + [
        "terms join with '+': prune:0.1+int8, filter:0.5+nm:2:4"
    ]


def markdown_table():
    """The grammar as a Markdown table (term, operator, meaning), for the docs."""
    lines = ["| term | operator | meaning |", "|---|---|---|"]
    for cls in operators():
        lines.append(f"| `{_term_label(cls)}` | `kc.{cls.__name__}` | {cls.scheme_help} |")
    return "\n".join(lines)


def help_text():
    """The one-paragraph help of `--scheme`."""
    kinds = "; ".join(f"{name}: {meaning}" for name, (_, meaning) in ARGUMENTS.items())
    return (
        f"compression scheme: terms joined by '+', each one of {', '.join(terms())} ({kinds}). "
        "Examples: 'prune:0.1+int8', 'filter:0.5+nm:2:4'."
    )


def _lookup(word):
    for cls in operators():
        if word in _words(cls):
            return cls
    return None


def _parse_term(term):
    parts = [p.strip() for p in term.split(":")]
    word = parts[0].lower()
    cls = _lookup(word)
    if cls is None:
        raise SchemeSyntaxError(
            f"unknown scheme word {parts[0]!r} in {term!r}; valid terms: {', '.join(terms())}."
        )
    expected = cls.scheme_args
    if len(parts) - 1 != len(expected):
        raise SchemeSyntaxError(
            f"scheme term {term!r} takes {len(expected)} argument"
            f"{'s' if len(expected) != 1 else ''} ({':'.join((word, *expected))}). "
            f"Received: {len(parts) - 1}."
        )
    pairs = zip(expected, parts[1:], strict=True)
    values = [ARGUMENTS[kind][0](text, term) for kind, text in pairs]
    if not isinstance(cls.scheme_word, str):
        values.insert(0, word)
    names = getattr(cls, "scheme_names", None)  # keywords, when the order differs
    try:
        return cls(**dict(zip(names, values, strict=True))) if names else cls(*values)
    except (ValueError, TypeError) as e:
        raise SchemeSyntaxError(f"scheme term {term!r}: {e}") from None


def parse_scheme(text):
    """Parses a `--scheme` string into an operator.

    Args:
        text: terms joined by `+`, e.g. `"prune:0.1+int8"` (see `terms()`).

    Returns:
        A single `kc` operator for one term, else a `kc.Compose` of them in
        order.

    Raises:
        SchemeSyntaxError: an unknown word, a wrong number of arguments, or
            an argument the operator rejects (a `ValueError`).

    Example:

    ```python
    scheme = parse_scheme("filter:0.5+nm:2:4")   # Compose([FilterPrune(0.5), NMPrune(2, 4)])
    ```
    """
    if not isinstance(text, str) or not text.strip():
        raise SchemeSyntaxError(f"the scheme is empty; valid terms: {', '.join(terms())}.")
    pieces = [t.strip() for t in text.split("+")]
    if any(not t for t in pieces):
        raise SchemeSyntaxError(f"empty term in scheme {text!r}; join terms with a single '+'.")
    operators_ = [_parse_term(t) for t in pieces]
    return operators_[0] if len(operators_) == 1 else Compose(operators_)
