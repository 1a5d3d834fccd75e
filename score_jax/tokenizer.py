"""A sentencepiece tokenizer with Gemma's special tokens and chat-turn template.

Ids are always looked up by piece (`<pad>`, `<eos>`, `<bos>`, `<unk>`,
`<start_of_turn>`, `<end_of_turn>`): the real Gemma vocab puts the turn markers at
106/107, the tiny demo vocab elsewhere. `encode` maps the literal marker strings
to their single ids whether or not the model treats them as user-defined
symbols, so templated text encodes the same way for every vocab.

Rollouts concatenate ids and never re-tokenise decoded text; the turn helpers
therefore return ids:
  user_turn_ids(t)  = <start_of_turn>user\\n{t}<end_of_turn>\\n<start_of_turn>model\\n
  end_of_model_turn = <end_of_turn>\\n
With `chat_template=False` (a base model without a chat format) the user turn is
just `{t}\\n` and the model turn ends at <eos>.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
from collections.abc import Iterable, Sequence

import sentencepiece as spm

SPECIAL_PIECES = ("<pad>", "<eos>", "<bos>", "<unk>")
TURN_PIECES = ("<start_of_turn>", "<end_of_turn>")
_MARKERS = re.compile("(" + "|".join(map(re.escape, ("<bos>", "<eos>") + TURN_PIECES)) + ")")


@dataclasses.dataclass(frozen=True, eq=False)
class Tokenizer:
  """Thin immutable wrapper over a SentencePieceProcessor."""

  processor: spm.SentencePieceProcessor
  model_proto: bytes
  chat_template: bool = True

  def __post_init__(self):
    missing = [p for p in SPECIAL_PIECES + TURN_PIECES
               if self.processor.piece_to_id(p) == self.processor.unk_id() and p != "<unk>"]
    if missing:
      raise ValueError(f"sentencepiece model lacks the Gemma special piece(s) {missing}; "
                       "use a Gemma tokenizer.model or train one with train_tokenizer().")

  def id_of(self, piece: str) -> int:
    return self.processor.piece_to_id(piece)

  @property
  def pad_id(self) -> int:
    return self.id_of("<pad>")

  @property
  def eos_id(self) -> int:
    return self.id_of("<eos>")

  @property
  def bos_id(self) -> int:
    return self.id_of("<bos>")

  @property
  def start_of_turn_id(self) -> int:
    return self.id_of("<start_of_turn>")

  @property
  def end_of_turn_id(self) -> int:
    return self.id_of("<end_of_turn>")

  @property
  def vocab_size(self) -> int:
    return self.processor.vocab_size()

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    """Token ids; `<bos>`, `<eos>`, `<start_of_turn>`, `<end_of_turn>` in text become their ids."""
    ids = [self.bos_id] if add_bos else []
    for part in _MARKERS.split(text):
      if not part:
        continue
      if _MARKERS.fullmatch(part):
        ids.append(self.id_of(part))
      else:
        ids.extend(self.processor.encode(part))
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`; padding is dropped, turn markers render as their piece strings."""
    return self.processor.decode([int(i) for i in ids if int(i) != self.pad_id])

  def user_turn_ids(self, text: str) -> list[int]:
    if not self.chat_template:
      return self.encode(text + "\n")
    return self.encode(f"<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n")

  def end_of_model_turn_ids(self) -> list[int]:
    return self.encode("<end_of_turn>\n") if self.chat_template else [self.eos_id]

  def next_turn_ids(self, text: str) -> list[int]:
    """What follows a finished model turn (ended by its stop token) to open the next user turn."""
    return self.encode("\n") + self.user_turn_ids(text)

  def first_turn_ids(self, text: str) -> list[int]:
    """<bos> + the templated first user turn: the prompt x1 of an episode."""
    return [self.bos_id] + self.user_turn_ids(text)

  def save(self, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
      f.write(self.model_proto)


def from_proto(model_proto: bytes, *, chat_template: bool = True) -> Tokenizer:
  processor = spm.SentencePieceProcessor()
  try:
    processor.LoadFromSerializedProto(model_proto)
  except Exception as e:
    raise ValueError(f"not a sentencepiece model ({type(e).__name__}: {e}).") from e
  return Tokenizer(processor=processor, model_proto=model_proto, chat_template=chat_template)


def load(path: str, *, chat_template: bool = True) -> Tokenizer:
  """Loads a sentencepiece `tokenizer.model` (e.g. Gemma's) from a local path."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"tokenizer file {path} not found; set config.tokenizer.path to a "
                            "sentencepiece .model file (e.g. Gemma's tokenizer.model).")
  with open(path, "rb") as f:
    proto = f.read()
  try:
    return from_proto(proto, chat_template=chat_template)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from e


def train_tokenizer(sentences: Iterable[str], vocab_size: int, *, model_type: str = "bpe",
                    chat_template: bool = True) -> Tokenizer:
  """Trains a small Gemma-style vocab in memory (deterministic for a given corpus).

  Gemma's conventions: pad/eos/bos/unk at ids 0-3, turn markers as user-defined
  pieces, digits split, whitespace kept verbatim, byte fallback so any character
  round-trips (this alone needs 256 byte pieces: vocab_size must exceed ~300).
  """
  writer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(list(sentences)), model_writer=writer, vocab_size=vocab_size,
      model_type=model_type, byte_fallback=True, split_digits=True,
      pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
      bos_piece="<bos>", unk_piece="<unk>", user_defined_symbols=list(TURN_PIECES),
      normalization_rule_name="identity", remove_extra_whitespaces=False,
      add_dummy_prefix=False, allow_whitespace_only_pieces=True, hard_vocab_limit=False,
      num_threads=1, minloglevel=2)
  return from_proto(writer.getvalue(), chat_template=chat_template)
