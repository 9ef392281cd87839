"""The default corpus: seven public-domain novels shipped (xz-compressed) with the package.

Split by whole books, never one book across splits:

- train: Emma, Mansfield Park, Pride and Prejudice, Sense and Sensibility, Moby-Dick
- validation: Northanger Abbey
- test: Persuasion
"""

from __future__ import annotations

import lzma
from importlib import resources

from tapa.errors import ConfigError

BOOKS = (
    "austen_emma",
    "austen_mansfield_park",
    "austen_northanger_abbey",
    "austen_persuasion",
    "austen_pride_and_prejudice",
    "austen_sense_and_sensibility",
    "melville_moby_dick",
)
SPLITS: dict[str, tuple[str, ...]] = {
    "train": (
        "austen_emma",
        "austen_mansfield_park",
        "austen_pride_and_prejudice",
        "austen_sense_and_sensibility",
        "melville_moby_dick",
    ),
    "validation": ("austen_northanger_abbey",),
    "test": ("austen_persuasion",),
}


def load_book(name: str) -> str:
    if name not in BOOKS:
        raise ConfigError(f"book: unknown {name!r}; choose one of {', '.join(BOOKS)}")
    data = resources.files("tapa.data").joinpath("books", f"{name}.txt.xz").read_bytes()
    return lzma.decompress(data).decode("utf-8")


def load_split(split: str) -> list[str]:
    """The books of a split, one string per book."""
    if split not in SPLITS:
        raise ConfigError(f"split: unknown {split!r}; choose one of {', '.join(SPLITS)}")
    return [load_book(name) for name in SPLITS[split]]
