"""A sentencepiece tokenizer with Gemma's special pieces and chat-turn template.

Special ids are always looked up by piece, never hard-coded: the real Gemma
vocab has `<pad>`/`<eos>`/`<bos>`/`<unk>` at 0-3 and the turn markers at 106/107
(105/106 in Gemma 3); a vocab from `train_tokenizer` puts the markers at 4/5.

Text <-> ids:
  * `encode` maps the literal strings `<bos>`, `<eos>`, `<start_of_turn>` and
    `<end_of_turn>` to their single ids and sentencepiece-encodes the text in
    between, so templated text encodes the same whether the model file marks the
    turn pieces as user-defined symbols (Gemma) or as control symbols.
  * `decode` drops `<pad>`, renders those four special ids as their literal piece
    strings (so `encode(decode(ids)) == ids` for ids that `encode` produced) and
    leaves everything else to sentencepiece (`<unk>` shows as " ⁇ ").

Rollouts concatenate ids and never re-tokenise decoded text, so the template
helpers return ids. With `chat_template=True` (Gemma instruction-tuned models):
  user_turn_ids(t)       = <start_of_turn>user\\n{t}<end_of_turn>\\n<start_of_turn>model\\n
  end_of_model_turn_ids  = <end_of_turn>\\n
With `chat_template=False` (base models that never saw the chat format) a user
turn is the plain text `{t}\\n` and a model turn ends with `<eos>`.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
from collections.abc import Iterable, Mapping, Sequence

import sentencepiece as spm

SPECIAL_PIECES = ("<pad>", "<eos>", "<bos>", "<unk>")
TURN_PIECES = ("<start_of_turn>", "<end_of_turn>")
MODEL_TYPES = ("bpe", "unigram")
# Pieces that `encode` recognises in text and `decode` renders literally.
TEXT_MARKERS = ("<bos>", "<eos>") + TURN_PIECES
_MARKER_SPLIT = re.compile("(" + "|".join(map(re.escape, TEXT_MARKERS)) + ")")
# Byte fallback needs one piece per byte value, plus the six special pieces.
_MIN_VOCAB_SIZE = 256 + len(SPECIAL_PIECES) + len(TURN_PIECES)


def _parse_model_proto(model_proto: bytes) -> spm.SentencePieceProcessor:
  processor = spm.SentencePieceProcessor()
  try:
    processor.LoadFromSerializedProto(model_proto)
  except Exception as e:  # sentencepiece raises bare RuntimeError / OSError.
    raise ValueError(f"not a sentencepiece model ({type(e).__name__}: {e}); expected the "
                     "serialized ModelProto of a `.model` file such as Gemma's "
                     "tokenizer.model.") from e
  return processor


def _special_ids(processor: spm.SentencePieceProcessor) -> dict[str, int]:
  """Id of every required special piece; raises naming the pieces the vocab lacks."""
  # piece_to_id answers unk_id() for an absent piece, so only unk itself can map there.
  unk_id = processor.unk_id()
  ids = {piece: processor.piece_to_id(piece) for piece in SPECIAL_PIECES + TURN_PIECES}
  missing = [piece for piece, i in ids.items()
             if (i == unk_id) != (piece == "<unk>") or processor.id_to_piece(i) != piece]
  if missing:
    raise ValueError(f"the sentencepiece model lacks the Gemma special piece(s) {missing}; use "
                     "a Gemma tokenizer.model or one trained by score_jax.tokenizer."
                     "train_tokenizer().")
  return ids


@dataclasses.dataclass(frozen=True, eq=False)
class Tokenizer:
  """Thin immutable wrapper over a SentencePieceProcessor built from `model_proto`.

  Attributes:
    model_proto: the serialized sentencepiece ModelProto (a `.model` file's bytes).
    chat_template: whether turns use Gemma's chat template (see module docstring).
    processor: the parsed sentencepiece processor (derived from `model_proto`).
    special_ids: piece -> id for the `SPECIAL_PIECES` and `TURN_PIECES`.
  """

  model_proto: bytes = dataclasses.field(repr=False)
  chat_template: bool = True
  processor: spm.SentencePieceProcessor = dataclasses.field(init=False, repr=False)
  special_ids: Mapping[str, int] = dataclasses.field(init=False, repr=False)

  def __post_init__(self):
    processor = _parse_model_proto(self.model_proto)
    # Frozen dataclass: derived fields are set once, here.
    object.__setattr__(self, "processor", processor)
    object.__setattr__(self, "special_ids", _special_ids(processor))

  @property
  def pad_id(self) -> int:
    return self.special_ids["<pad>"]

  @property
  def eos_id(self) -> int:
    return self.special_ids["<eos>"]

  @property
  def bos_id(self) -> int:
    return self.special_ids["<bos>"]

  @property
  def unk_id(self) -> int:
    return self.special_ids["<unk>"]

  @property
  def start_of_turn_id(self) -> int:
    return self.special_ids["<start_of_turn>"]

  @property
  def end_of_turn_id(self) -> int:
    return self.special_ids["<end_of_turn>"]

  @property
  def model_turn_end_id(self) -> int:
    """The token a model emits to end its turn: `<end_of_turn>`, or `<eos>` without the template."""
    return self.end_of_turn_id if self.chat_template else self.eos_id

  @property
  def vocab_size(self) -> int:
    """Number of pieces; may be below the size asked of `train_tokenizer` for a small corpus."""
    return self.processor.vocab_size()

  def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
    """Token ids of `text`, with the `TEXT_MARKERS` strings mapped to their single ids."""
    if not isinstance(text, str):
      raise TypeError(f"encode expects a str, got {type(text).__name__}.")
    ids = [self.bos_id] if add_bos else []
    for i, part in enumerate(_MARKER_SPLIT.split(text)):
      if i % 2:  # re.split with a capture group puts the matched markers at odd positions.
        ids.append(self.special_ids[part])
      elif part:
        ids.extend(self.processor.encode(part))
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`: `<pad>` dropped, the `TEXT_MARKERS` written as their piece strings."""
    marker_of_id = {self.special_ids[piece]: piece for piece in TEXT_MARKERS}
    vocab_size = self.vocab_size
    parts, run = [], []
    for token in map(int, ids):
      if not 0 <= token < vocab_size:
        raise ValueError(f"token id {token} is outside the vocabulary [0, {vocab_size}); the "
                         "ids must come from a model whose vocab matches this tokenizer.")
      if token == self.pad_id:
        continue
      if token in marker_of_id:
        parts += [self.processor.decode(run), marker_of_id[token]]
        run = []
      else:
        run.append(token)
    parts.append(self.processor.decode(run))
    return "".join(parts)

  def user_turn_ids(self, text: str) -> list[int]:
    """A user turn followed by the opening of the model's turn (no `<bos>`)."""
    if not self.chat_template:
      return self.encode(text + "\n")
    return self.encode(f"<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n")

  def first_turn_ids(self, text: str) -> list[int]:
    """`<bos>` + the first user turn: the prompt x1 of an episode."""
    return [self.bos_id] + self.user_turn_ids(text)

  def end_of_model_turn_ids(self) -> list[int]:
    """What closes a model turn in a transcript: `<end_of_turn>\\n` (`<eos>` if no template)."""
    if not self.chat_template:
      return [self.eos_id]
    return self.encode("<end_of_turn>\n")

  def next_turn_ids(self, text: str) -> list[int]:
    """What follows a model turn that ended with `model_turn_end_id` to open the next user turn.

    `[model_turn_end_id] + next_turn_ids(t) == end_of_model_turn_ids() + user_turn_ids(t)`
    with the chat template; without it the new turn starts on a fresh line after `<eos>`.
    """
    return self.encode("\n") + self.user_turn_ids(text)

  def save(self, path: str) -> None:
    """Writes the model proto bytes: a `.model` file that `load` (or sentencepiece) reads."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
      f.write(self.model_proto)


def load(path: str, *, chat_template: bool = True) -> Tokenizer:
  """Loads a sentencepiece `.model` file (e.g. Gemma's tokenizer.model) from a local path."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"tokenizer file {path} not found; set config.tokenizer.path to a "
                            "sentencepiece .model file (e.g. Gemma's tokenizer.model), or leave "
                            "it empty to train a small one.")
  with open(path, "rb") as f:
    model_proto = f.read()
  try:
    return Tokenizer(model_proto, chat_template=chat_template)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from e


def model_proto_from_vocab(pieces: Sequence[str], scores: Sequence[float],
                           piece_types: Sequence[int], *, unk_id: int, bos_id: int, eos_id: int,
                           pad_id: int, add_dummy_prefix: bool = False) -> bytes:
  """A serialized sentencepiece BPE ModelProto for a vocabulary (as a GGUF file stores one).

  `piece_types` use sentencepiece's numbering (1 normal, 2 unknown, 3 control, 4
  user-defined, 5 unused, 6 byte), which GGUF copies. Gemma's normalisation:
  identity, spaces kept and written as "▁", byte fallback when there are byte pieces.
  """
  from sentencepiece import sentencepiece_model_pb2 as pb  # pylint: disable=import-outside-toplevel
  if not len(pieces) == len(scores) == len(piece_types):
    raise ValueError(f"vocab lists differ in length: {len(pieces)} pieces, {len(scores)} scores, "
                     f"{len(piece_types)} types.")
  proto = pb.ModelProto()
  for i, (piece, score, piece_type) in enumerate(zip(pieces, scores, piece_types)):
    entry = proto.pieces.add()
    # llama.cpp stores whitespace-run pieces with real spaces; sentencepiece matches "▁".
    entry.piece = piece.replace(" ", "\u2581")
    entry.score = float(score)
    # GGUF files mark <unk> as control; sentencepiece needs exactly one UNKNOWN piece.
    entry.type = pb.ModelProto.SentencePiece.UNKNOWN if i == unk_id else int(piece_type)
  spec = proto.trainer_spec
  spec.model_type = pb.TrainerSpec.BPE
  spec.vocab_size = len(pieces)
  spec.byte_fallback = any(t == pb.ModelProto.SentencePiece.BYTE for t in piece_types)
  spec.split_digits = True
  spec.allow_whitespace_only_pieces = True
  for name, i in (("unk", unk_id), ("bos", bos_id), ("eos", eos_id), ("pad", pad_id)):
    setattr(spec, f"{name}_id", i)
    setattr(spec, f"{name}_piece", proto.pieces[i].piece if 0 <= i < len(pieces) else "")
  norm = proto.normalizer_spec
  norm.name = "identity"
  norm.add_dummy_prefix = add_dummy_prefix
  norm.remove_extra_whitespaces = False
  norm.escape_whitespaces = True
  return proto.SerializeToString()


def from_gguf(source, *, chat_template: bool | None = None) -> Tokenizer:
  """The sentencepiece tokenizer a GGUF file describes (its `tokenizer.ggml.*` fields).

  `source` is a path or an open `gguf.GGUFReader` (`score_jax.model.gguf.open_gguf`).
  `chat_template=None` uses Gemma's chat turns iff the file carries a chat template
  (instruction-tuned models do; the base Gemma 3 270M does not).
  """
  try:
    import gguf  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("reading GGUF files needs the `gguf` package: pip install gguf==0.19.0") from e
  if isinstance(source, gguf.GGUFReader):
    reader, path = source, source.data.filename
  else:
    path = os.fspath(source)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"GGUF file {path} not found.")
    reader = gguf.GGUFReader(path)
  fields = reader.fields
  get = lambda key, default=None: fields[key].contents() if key in fields else default
  kind = get("tokenizer.ggml.model")
  if kind != "llama":
    raise ValueError(f"{path}: GGUF tokenizer model is {kind!r}; only sentencepiece vocabularies "
                     "('llama', as Gemma's) can be rebuilt as a sentencepiece model.")
  pieces = get("tokenizer.ggml.tokens")
  scores = get("tokenizer.ggml.scores", [0.0] * len(pieces))
  types = get("tokenizer.ggml.token_type", [1] * len(pieces))
  ids = {name: get(f"tokenizer.ggml.{name}_token_id", default)
         for name, default in (("unknown", 3), ("bos", 2), ("eos", 1), ("padding", 0))}
  model_proto = model_proto_from_vocab(
      pieces, scores, types, unk_id=ids["unknown"], bos_id=ids["bos"], eos_id=ids["eos"],
      pad_id=ids["padding"],
      # llama.cpp's default for sentencepiece files without the key is to add the space.
      add_dummy_prefix=bool(get("tokenizer.ggml.add_space_prefix", True)))
  if chat_template is None:
    chat_template = "tokenizer.chat_template" in fields
  try:
    return Tokenizer(model_proto, chat_template=chat_template)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from e


def train_tokenizer(sentences: Iterable[str], vocab_size: int, *, model_type: str = "bpe",
                    chat_template: bool = True) -> Tokenizer:
  """Trains a small vocab with Gemma's conventions, in memory and deterministically.

  Gemma's conventions: `<pad>`/`<eos>`/`<bos>`/`<unk>` at ids 0-3, the turn
  markers as user-defined pieces (ids 4/5 here), digits split into single
  digits, text kept verbatim (identity normalisation, no dummy prefix, runs of
  spaces kept) and byte fallback so any character round-trips. Byte fallback
  alone takes 256 pieces, so `vocab_size` must be at least 262 plus the
  number of distinct characters of the corpus. A small or repetitive corpus
  yields fewer pieces than `vocab_size` (the limit is soft).

  Args:
    sentences: training text, one sentence (line) per item.
    vocab_size: the number of pieces to aim for.
    model_type: "bpe" (as Gemma) or "unigram".
    chat_template: passed to the returned `Tokenizer`.
  """
  if model_type not in MODEL_TYPES:
    raise ValueError(f"model_type={model_type!r}; use one of {MODEL_TYPES}.")
  if vocab_size < _MIN_VOCAB_SIZE:
    raise ValueError(f"vocab_size={vocab_size} is too small: byte fallback and the special "
                     f"pieces alone take {_MIN_VOCAB_SIZE}; add room for the corpus's characters.")
  sentences = [s for s in sentences if s]
  if not sentences:
    raise ValueError("train_tokenizer got no text: pass a non-empty iterable of non-empty strings.")
  writer = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=writer, vocab_size=vocab_size,
        model_type=model_type, byte_fallback=True, split_digits=True,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
        bos_piece="<bos>", unk_piece="<unk>", user_defined_symbols=list(TURN_PIECES),
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, allow_whitespace_only_pieces=True, hard_vocab_limit=False,
        num_threads=1, minloglevel=2)
  except RuntimeError as e:
    raise ValueError(f"sentencepiece training failed for vocab_size={vocab_size}, "
                     f"model_type={model_type!r}: {e}") from e
  return Tokenizer(writer.getvalue(), chat_template=chat_template)
