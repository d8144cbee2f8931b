"""The `--scheme` grammar of the command line: text to a `kc` operator.

A scheme is one or more terms joined by `+`; each term is a word followed by
its arguments, separated by `:`:

| term | operator |
|---|---|
| `prune:D` | `kc.Prune(D)`: unstructured magnitude pruning to density D |
| `neuron:D` | `kc.NeuronPrune(D)`: whole output units |
| `filter:D` | `kc.FilterPrune(D)`: whole convolution filters |
| `structure:D` | `kc.StructurePrune(D)`: whole input channels |
| `block:D:RxC` | `kc.BlockPrune(D, block_size=(R, C))` |
| `nm:N:M` | `kc.NMPrune(N, M)`: N nonzeros in every M weights |
| `float16`, `int8`, `int4` | `kc.Quantize(dtype)` |

Example: `prune:0.1+int8`, `filter:0.5+nm:2:4`.
"""

from keras_condensa.operators import (
    BlockPrune,
    Compose,
    FilterPrune,
    NeuronPrune,
    NMPrune,
    Prune,
    Quantize,
    StructurePrune,
)

_DENSITY_OPERATORS = {
    "prune": Prune,
    "neuron": NeuronPrune,
    "filter": FilterPrune,
    "structure": StructurePrune,
}
_QUANTIZE_WORDS = ("float16", "int8", "int4")

#: The grammar's terms, as shown by `--help` and in errors.
TERMS = (
    "prune:D",
    "neuron:D",
    "filter:D",
    "structure:D",
    "block:D:RxC",
    "nm:N:M",
    "float16",
    "int8",
    "int4",
)

HELP = (
    "compression scheme: terms joined by '+', each one of "
    + ", ".join(TERMS)
    + " (D: density in (0, 1], the fraction of weights kept; RxC: block rows x columns; "
    "N:M: N nonzeros in every M weights). Examples: 'prune:0.1+int8', 'filter:0.5+nm:2:4'."
)


class SchemeSyntaxError(ValueError):
    """A `--scheme` string that does not follow the grammar."""


def _number(text, term, what, kind=float):
    try:
        return kind(text)
    except ValueError:
        raise SchemeSyntaxError(
            f"scheme term {term!r}: {what} must be a{'n integer' if kind is int else ' number'}. "
            f"Received: {text!r}."
        ) from None


def _arity(term, parts, n):
    if len(parts) != n + 1:
        raise SchemeSyntaxError(
            f"scheme term {term!r} takes {n} argument{'s' if n != 1 else ''} "
            f"({next(t for t in TERMS if t.split(':')[0] == parts[0])}). "
            f"Received: {len(parts) - 1}."
        )


def _parse_term(term):
    parts = term.split(":")
    word = parts[0].strip().lower()
    parts = [word] + [p.strip() for p in parts[1:]]
    try:
        if word in _DENSITY_OPERATORS:
            _arity(term, parts, 1)
            return _DENSITY_OPERATORS[word](_number(parts[1], term, "the density"))
        if word == "block":
            _arity(term, parts, 2)
            density = _number(parts[1], term, "the density")
            size = parts[2].lower().split("x")
            if len(size) != 2:
                raise SchemeSyntaxError(
                    f"scheme term {term!r}: the block size must be RxC, e.g. 4x4. "
                    f"Received: {parts[2]!r}."
                )
            rows, cols = (_number(s, term, "the block size", int) for s in size)
            return BlockPrune(density, block_size=(rows, cols))
        if word == "nm":
            _arity(term, parts, 2)
            n = _number(parts[1], term, "N", int)
            m = _number(parts[2], term, "M", int)
            return NMPrune(n, m)
        if word in _QUANTIZE_WORDS:
            _arity(term, parts, 0)
            return Quantize(word)
    except SchemeSyntaxError:
        raise
    except (ValueError, TypeError) as e:
        raise SchemeSyntaxError(f"scheme term {term!r}: {e}") from None
    raise SchemeSyntaxError(
        f"unknown scheme word {parts[0]!r} in {term!r}; valid terms: {', '.join(TERMS)}."
    )


def parse_scheme(text):
    """Parses a `--scheme` string into an operator.

    Args:
        text: terms joined by `+`, e.g. `"prune:0.1+int8"` (see the module
            docstring for the terms).

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
        raise SchemeSyntaxError(f"the scheme is empty; valid terms: {', '.join(TERMS)}.")
    terms = [t.strip() for t in text.split("+")]
    if any(not t for t in terms):
        raise SchemeSyntaxError(f"empty term in scheme {text!r}; join terms with a single '+'.")
    operators = [_parse_term(t) for t in terms]
    return operators[0] if len(operators) == 1 else Compose(operators)
