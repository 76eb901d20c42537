"""A cached training program is re-hashed when it is reused, like an artifact's verified_pte: a program
changed or cut short since its export is not trusted (finetune exports it again)."""

from __future__ import annotations

from edgerun.core.artifact import sha256_file
from edgerun.export.finetune import TrainingProgram


def _program(tmp_path) -> TrainingProgram:
    pte = tmp_path / "train.pte"
    pte.write_bytes(b"\x00program bytes\x01" * 100)
    prog = TrainingProgram(path=pte, batch=4, sample_shape=(1, 8, 8), dtype="float32", names=("w",), shapes=((2, 2),),
                           trainable=4, frozen=0, pte_bytes=pte.stat().st_size, pte_sha256=sha256_file(pte))
    prog.save(tmp_path)
    return prog


def test_a_cached_program_is_reused_only_while_its_bytes_are_the_ones_exported(tmp_path):
    prog = _program(tmp_path)
    assert TrainingProgram.cached(tmp_path) == prog
    data = bytearray((tmp_path / "train.pte").read_bytes())
    data[5] ^= 0xFF                                       # same size, one byte changed
    (tmp_path / "train.pte").write_bytes(bytes(data))
    assert TrainingProgram.cached(tmp_path) is None
    (tmp_path / "train.pte").write_bytes(bytes(data[:-3]))  # cut short
    assert TrainingProgram.cached(tmp_path) is None


def test_a_missing_or_unreadable_description_means_export_again(tmp_path):
    assert TrainingProgram.cached(tmp_path) is None
    _program(tmp_path)
    (tmp_path / "program.json").write_text("{not json")
    assert TrainingProgram.cached(tmp_path) is None
    (tmp_path / "program.json").write_text('{"batch": 4}')
    assert TrainingProgram.cached(tmp_path) is None
