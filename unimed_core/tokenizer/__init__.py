"""UniMed's one vocabulary, its tokenizer and its decoding grammar (DESIGN.md §1.3)."""

from unimed_core.tokenizer.grammar import GrammarState, SequenceGrammar
from unimed_core.tokenizer.tokenizer import DecodedSequence, Tokenizer
from unimed_core.tokenizer.vocabulary import Vocabulary

__all__ = ["DecodedSequence", "GrammarState", "SequenceGrammar", "Tokenizer", "Vocabulary"]
