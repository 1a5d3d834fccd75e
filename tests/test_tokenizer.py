"""Tokenizer: special ids by piece, template ids, round trips, determinism, clear errors."""

import dataclasses
import io

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

from score_jax import tokenizer

CORPUS = ["Q: 12+7*3=? A: 7*3=21 12+21=33. Answer: 33",
          "63+18=81, 81-61=20, 20-17=3. Answer: 3",
          "There might be an error in the solution above. Please correct it."] * 40
TEMPLATE_TEXT = "<start_of_turn>user\n12+7=?<end_of_turn>\n<start_of_turn>model\n"


@pytest.fixture(scope="module")
def tok():
  return tokenizer.train_tokenizer(CORPUS, vocab_size=340)


def _edit_pieces(model_proto: bytes, edit) -> bytes:
  """Applies `edit(ModelProto)` to a copy of a serialized model."""
  proto = sentencepiece_model_pb2.ModelProto.FromString(model_proto)
  edit(proto)
  return proto.SerializeToString()


def test_gemma_special_ids(tok):
  sp = tok.processor
  assert [sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<eos>", "<bos>", "<unk>"]
  assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (0, 1, 2, 3)
  assert sp.id_to_piece(tok.start_of_turn_id) == "<start_of_turn>"
  assert sp.id_to_piece(tok.end_of_turn_id) == "<end_of_turn>"
  assert tok.vocab_size == sp.get_piece_size() == 340
  assert "model_proto" not in repr(tok)  # A real Gemma proto is megabytes.


def test_chat_template_ids(tok):
  sp = tok.processor
  sot, eot = sp.piece_to_id("<start_of_turn>"), sp.piece_to_id("<end_of_turn>")
  user_turn = ([sot] + sp.encode("user\n") + sp.encode("12+7=?") + [eot] + sp.encode("\n")
               + [sot] + sp.encode("model\n"))
  assert tok.user_turn_ids("12+7=?") == user_turn
  assert tok.first_turn_ids("12+7=?") == [sp.piece_to_id("<bos>")] + user_turn
  assert tok.end_of_model_turn_ids() == [eot] + sp.encode("\n")
  assert tok.model_turn_end_id == eot
  # A model turn stopped by its end token, then next_turn_ids, is the full transcript.
  assert ([tok.model_turn_end_id] + tok.next_turn_ids("Fix it.")
          == tok.end_of_model_turn_ids() + tok.user_turn_ids("Fix it."))


def test_plain_prompts_without_chat_template(tok):
  sp = tok.processor
  plain = dataclasses.replace(tok, chat_template=False)
  assert plain.user_turn_ids("12+7=?") == sp.encode("12+7=?\n")
  assert plain.first_turn_ids("12+7=?") == [2] + sp.encode("12+7=?\n")
  assert plain.end_of_model_turn_ids() == [1]
  assert plain.model_turn_end_id == 1
  assert plain.next_turn_ids("Fix it.") == sp.encode("\n") + sp.encode("Fix it.\n")


@pytest.mark.parametrize("text", [
    "63+18=81, 81-61=20. Answer: 3", "  spaces,\ttabs\n\nand newlines ",
    "ünïcödé ∑ 🙂 中文",
    "<bos><start_of_turn>user\nhi<end_of_turn>\n<eos>", ""])
def test_round_trip(tok, text):
  ids = tok.encode(text)
  assert tok.unk_id not in ids
  assert tok.decode(ids) == text
  assert tok.encode(tok.decode(ids)) == ids
  assert tok.decode([tok.pad_id] + ids + [tok.pad_id] * 3) == text  # Padding is dropped.


def test_unseen_characters_use_byte_fallback(tok):
  ids = tok.encode("🙂")
  assert [tok.processor.id_to_piece(i) for i in ids] == ["<0xF0>", "<0x9F>", "<0x99>", "<0x82>"]


def test_markers_become_single_ids_and_digits_split(tok):
  assert tok.encode("<bos>1237<eos>") == [2, *(tok.processor.piece_to_id(d) for d in "1237"), 1]
  assert tok.encode("12", add_bos=True) == [2] + tok.encode("12")
  # Unrelated angle-bracket text stays ordinary text.
  assert tok.decode(tok.encode("<pad> <start>")) == "<pad> <start>"
  assert tok.pad_id not in tok.encode("<pad>")


def test_turn_markers_as_control_pieces_at_other_ids(tok):
  """Gemma-like layout: markers elsewhere in the vocab and not user-defined symbols."""
  control = sentencepiece_model_pb2.ModelProto.SentencePiece.CONTROL

  def move_markers_to_end_as_control(proto):
    markers = [p for p in proto.pieces if p.piece in tokenizer.TURN_PIECES]
    kept = [p for p in proto.pieces if p.piece not in tokenizer.TURN_PIECES]
    del proto.pieces[:]
    proto.pieces.extend(kept + markers)
    for piece in proto.pieces[-2:]:
      piece.type = control

  moved = tokenizer.Tokenizer(_edit_pieces(tok.model_proto, move_markers_to_end_as_control))
  size = moved.vocab_size
  assert (moved.start_of_turn_id, moved.end_of_turn_id) == (size - 2, size - 1)
  # Sentencepiece alone no longer recognises the marker text ...
  assert size - 2 not in moved.processor.encode("<start_of_turn>")
  # ... but encode still maps it, and decode still renders it.
  ids = moved.encode(TEMPLATE_TEXT)
  # Markers go to the end; the pieces after them move down by two.
  shift = {tok.start_of_turn_id: size - 2, tok.end_of_turn_id: size - 1}
  expected = [shift.get(i, i - 2 if i > tok.end_of_turn_id else i)
              for i in tok.encode(TEMPLATE_TEXT)]
  assert ids == expected
  assert moved.user_turn_ids("12+7=?") == ids
  assert moved.decode(ids) == TEMPLATE_TEXT


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_training_is_deterministic_and_save_load_round_trips(model_type, tmp_path):
  first = tokenizer.train_tokenizer(CORPUS, vocab_size=320, model_type=model_type)
  second = tokenizer.train_tokenizer(iter(CORPUS), vocab_size=320, model_type=model_type)
  assert first.model_proto == second.model_proto
  path = str(tmp_path / "sub" / "tokenizer.model")
  first.save(path)
  loaded = tokenizer.load(path)
  assert loaded.model_proto == first.model_proto
  text = "81-61=20. There might be an error: ∑🙂"
  assert loaded.encode(text) == first.encode(text)
  assert spm.SentencePieceProcessor(model_file=path).encode("12 + 7") == first.encode("12 + 7")


def test_load_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.model not found"):
    tokenizer.load(str(tmp_path / "missing.model"))
  garbage = tmp_path / "garbage.model"
  garbage.write_bytes(b"not a model at all")
  with pytest.raises(ValueError, match="garbage.model: not a sentencepiece model"):
    tokenizer.load(str(garbage))


def test_model_without_turn_pieces_is_rejected(tmp_path):
  writer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(CORPUS), model_writer=writer, vocab_size=300, byte_fallback=True,
      pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
      bos_piece="<bos>", unk_piece="<unk>", minloglevel=2, num_threads=1)
  path = tmp_path / "no_turns.model"
  path.write_bytes(writer.getvalue())
  with pytest.raises(ValueError, match=r"no_turns.model: .*lacks .*'<start_of_turn>', "
                                       r"'<end_of_turn>'"):
    tokenizer.load(str(path))


def test_renamed_unk_piece_is_rejected(tok):
  def rename_unk(proto):
    proto.pieces[3].piece = "<UNK>"

  with pytest.raises(ValueError, match=r"lacks .*\['<unk>'\]"):
    tokenizer.Tokenizer(_edit_pieces(tok.model_proto, rename_unk))


def test_bad_inputs_get_clear_errors(tok):
  with pytest.raises(TypeError, match="expects a str, got bytes"):
    tok.encode(b"12")
  with pytest.raises(ValueError, match=r"token id 340 is outside the vocabulary \[0, 340\)"):
    tok.decode([5, 340])
  with pytest.raises(ValueError, match="model_type='word'"):
    tokenizer.train_tokenizer(CORPUS, 340, model_type="word")
  with pytest.raises(ValueError, match="vocab_size=100 is too small"):
    tokenizer.train_tokenizer(CORPUS, 100)
  with pytest.raises(ValueError, match="no text"):
    tokenizer.train_tokenizer(["", ""], 340)
  # Enough for the byte pieces but not for the corpus's own characters.
  with pytest.raises(ValueError, match="vocab_size=270.*smaller than required_chars"):
    tokenizer.train_tokenizer(CORPUS, 270)
