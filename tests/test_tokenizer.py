"""Tokenizer: special ids by piece, turn template ids, round trips, determinism, clear errors."""

import pytest

from score_jax import tokenizer

CORPUS = ["Q: 12+7*3=? A: 7*3=21 12+21=33. Answer: 33",
          "63+18=81, 81-61=20, 20-17=3. Answer: 3",
          "There might be an error in the solution above."] * 40


@pytest.fixture(scope="module")
def tok():
  return tokenizer.train_tokenizer(CORPUS, vocab_size=340)


def test_gemma_special_ids(tok):
  assert (tok.pad_id, tok.eos_id, tok.bos_id) == (0, 1, 2)
  assert tok.processor.id_to_piece(tok.start_of_turn_id) == "<start_of_turn>"
  assert tok.processor.id_to_piece(tok.end_of_turn_id) == "<end_of_turn>"
  assert len({tok.start_of_turn_id, tok.end_of_turn_id, tok.pad_id, tok.eos_id}) == 4


def test_turn_template_ids(tok):
  sp = tok.processor
  expected = ([tok.start_of_turn_id] + sp.encode("user\n") + sp.encode("12+7=?")
              + [tok.end_of_turn_id] + sp.encode("\n") + [tok.start_of_turn_id]
              + sp.encode("model\n"))
  assert tok.user_turn_ids("12+7=?") == expected
  assert tok.first_turn_ids("12+7=?") == [tok.bos_id] + expected
  assert tok.end_of_model_turn_ids() == [tok.end_of_turn_id] + sp.encode("\n")
  assert tok.next_turn_ids("fix it") == sp.encode("\n") + tok.user_turn_ids("fix it")
  plain = tokenizer.from_proto(tok.model_proto, chat_template=False)
  assert plain.user_turn_ids("12+7=?") == sp.encode("12+7=?\n")


def test_round_trip_with_unseen_characters(tok):
  for text in ["63+18=81, 81-61=20. Answer: 3", "  spaces\n\nand newlines ", "ünïcödé ∑ 🙂",
               "<start_of_turn>user\nhi<end_of_turn>"]:
    assert tok.decode(tok.encode(text)) == text
  assert tok.encode("12", add_bos=True)[0] == tok.bos_id
  digits = [tok.processor.id_to_piece(i) for i in tok.encode("1237")]
  assert digits == ["1", "2", "3", "7"]  # digits split, as in Gemma


def test_training_is_deterministic_and_save_load(tok, tmp_path):
  again = tokenizer.train_tokenizer(CORPUS, vocab_size=340)
  assert again.model_proto == tok.model_proto
  path = str(tmp_path / "tok.model")
  tok.save(path)
  loaded = tokenizer.load(path)
  text = "81-61=20. There might be an error."
  assert loaded.encode(text) == tok.encode(text)


def test_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.model not found"):
    tokenizer.load(str(tmp_path / "missing.model"))
  garbage = tmp_path / "garbage.model"
  garbage.write_bytes(b"not a model at all")
  with pytest.raises(ValueError, match="garbage.model: not a sentencepiece model"):
    tokenizer.load(str(garbage))
